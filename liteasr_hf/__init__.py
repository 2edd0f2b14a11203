"""LiteASR low-rank Whisper encoders for Hugging Face Transformers: transcribe, calibrate, compress, load.

`import liteasr_hf` registers the "lite-whisper" model type with AutoConfig, AutoModel and
AutoModelForSpeechSeq2Seq, the `attn_implementation="liteasr"` attention, and the ASR pipeline for lite models.
Transcription (`transcribe`, `Transcriber`) and compression (`compress`, `CompressionConfig`, ...) load on first use:
importing the package does not import the calibration stack, PyAV or the voice-activity detector.
"""

import importlib

from .cpu import cpu_bf16_support, optimize_for_cpu
from .lite_whisper import *  # noqa: F401,F403
from .lite_whisper import __all__ as _model_all

_LAZY = {
    "CompressionConfig": "calibration", "Compressor": "calibration", "compress": "calibration",
    "save_compressed": "calibration", "Transcriber": "transcription", "Transcription": "transcription",
    "transcribe": "transcription",
}

__all__ = [*_model_all, *_LAZY, "cpu_bf16_support", "optimize_for_cpu"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
