"""The fastest CPU setting for transcription, measured on a 2-core Xeon with AMX: see docs/benchmarks.md.

The encoder is matrix-matrix work, where bf16 on AMX is about 2.4x fp32. A decoder step at batch 1 is a chain of
matrix-vector products whose cost is reading the weights: there oneDNN's bf16 is slower than fp32, and int8 (dynamic
quantization) reads a quarter of the bytes but looped on 1 of 115 evaluation clips where fp32 and bf16 did not. At
batch 8 the decoder's products have 8 rows and bf16 is fastest. Hence `optimize_for_cpu`: bf16 where the CPU has it,
the decoder's precision a choice.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

logger = logging.getLogger(__name__)


def cpu_bf16_support() -> str:
    """'native' where this CPU has AMX or AVX512-BF16 (bf16 matmuls in hardware), 'emulated' where it has neither
    (bf16 then runs slower than fp32), 'unknown' where /proc/cpuinfo cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown"
    return "native" if flags & {"amx_bf16", "avx512_bf16"} else "emulated"


def _cast_input(dtype):
    def hook(module, args, kwargs):
        if "input_features" in kwargs:
            kwargs["input_features"] = kwargs["input_features"].to(dtype)
        elif args:
            args = (args[0].to(dtype),) + tuple(args[1:])
        return args, kwargs
    return hook


def _cast_output(dtype):
    def hook(module, args, kwargs, out):
        out.last_hidden_state = out.last_hidden_state.to(dtype)
        return out
    return hook


def optimize_for_cpu(model, dtype="auto", decoder: str | None = None):
    """In place, for inference on a CPU. `dtype` "auto": bfloat16 where the CPU runs it natively (AMX / AVX512-BF16),
    else float32 with a warning (emulated bf16 is slower than fp32); or a torch dtype. `decoder` overrides the
    decoder and output projection: "fp32" (at batch 1 about as fast as bf16, the decoder's numerics unchanged), "bf16",
    or "int8" (dynamic quantization of its linears: the fastest at batch 1 and 8 on speech-dev, but it looped on 1 of
    115 evaluation clips at batch 1 where bf16 and fp32 did not). The encoder's input and output are cast at its
    boundary, so float32 features go in as from the feature extractor. Returns the model. Any Whisper-family model;
    not for training or CUDA."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("optimize_for_cpu is for a model on the CPU")
    if decoder not in (None, "fp32", "bf16", "int8"):
        raise ValueError(f"decoder must be 'fp32', 'bf16' or 'int8', got {decoder!r}")
    if dtype == "auto":
        support = cpu_bf16_support()
        dtype = torch.bfloat16 if support == "native" else torch.float32
        if support != "native":
            logger.warning("this CPU has no native bf16 (AMX / AVX512-BF16: %s): the model stays float32", support)
    decoder_dtype = {None: dtype, "fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}[decoder]
    model.to(decoder_dtype)
    encoder = model.get_encoder()
    encoder.to(dtype)
    encoder.register_forward_pre_hook(_cast_input(dtype), with_kwargs=True)  # features come in float32
    if dtype != decoder_dtype:
        encoder.register_forward_hook(_cast_output(decoder_dtype), with_kwargs=True)
    if decoder == "int8":
        with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao
            warnings.simplefilter("ignore")
            model.model.decoder = torch.ao.quantization.quantize_dynamic(model.model.decoder, {nn.Linear}, dtype=torch.qint8)
            model.proj_out = torch.ao.quantization.quantize_dynamic(nn.Sequential(model.proj_out), {nn.Linear}, dtype=torch.qint8)[0]
    return model.eval()
