"""LiteASR low-rank Whisper encoders for Hugging Face Transformers: calibrate, compress, load, transcribe.

`import liteasr_hf` registers the "lite-whisper" model type with AutoConfig, AutoModel and
AutoModelForSpeechSeq2Seq, the `attn_implementation="liteasr"` attention, and the ASR pipeline for lite models.
"""

from .cpu import cpu_bf16_support, optimize_for_cpu
from .lite_whisper import *  # noqa: F401,F403
from .lite_whisper import __all__ as _model_all

__all__ = [*_model_all, "cpu_bf16_support", "optimize_for_cpu"]
__version__ = "0.1.0"
