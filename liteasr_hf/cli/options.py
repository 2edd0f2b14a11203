"""What several commands share, importable without torch (argparse choices are built before any heavy import)."""

from __future__ import annotations

# The dtypes a command runs in: short name -> torch attribute. `liteasr-hf calibrate` takes the long names.
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str):
    """torch.float32 ... for a short ("fp32") or long ("float32") name of DTYPES."""
    import torch

    long = DTYPES.get(name, name)
    if long not in DTYPES.values():
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join([*DTYPES, *DTYPES.values()])}")
    return getattr(torch, long)
