"""How this package calls Whisper's `generate`: greedy settings, the token cap, and a quiet log.

Shared by evaluation (transcripts to score) and calibration (the dense model's transcripts that the
decoder-KL refinement matches).
"""

from __future__ import annotations

import contextlib
import logging

MAX_NEW_TOKENS = 128  # ~4x the longest sentence here; a hypothesis that reaches it is a repetition loop


def generate_kwargs(model, language=None, task=None, max_new_tokens=MAX_NEW_TOKENS) -> dict:
    """Greedy decoding; language/task only where the model is multilingual (English-only models reject them)."""
    kw = dict(num_beams=1, do_sample=False, max_new_tokens=max_new_tokens)
    if getattr(model.generation_config, "is_multilingual", False):
        kw.update(language=language or "en", task=task or "transcribe")
    elif language not in (None, "en", "english", "English") or task not in (None, "transcribe"):
        raise ValueError(f"this model is English-only: language {language!r} / task {task!r} are not available")
    return kw


def suppression_mask(tokens, size: int, device=None):
    """An additive mask over a vocabulary of `size`: -inf at `tokens`, 0 elsewhere (what Whisper's suppression
    processors do to the scores). None when there are no tokens."""
    import torch

    tokens = list(tokens or ())
    if not tokens:
        return None
    mask = torch.zeros(size, device=device)
    mask[tokens] = float("-inf")
    return mask


class _KnownLengthWarning(logging.Filter):
    """Whisper checkpoints ship max_length=448 in their generation config, so generate with our deliberate
    max_new_tokens warns "Both max_new_tokens and max_length" (transformers 5.24: once per decoding step)."""

    def filter(self, record):
        return not record.getMessage().startswith("Both `max_new_tokens`")


@contextlib.contextmanager
def quiet_length_warning():
    """Drop that one warning from transformers' generation log while the block runs."""
    log, quiet = logging.getLogger("transformers.generation.utils"), _KnownLengthWarning()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)
