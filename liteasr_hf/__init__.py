"""LiteASR low-rank Whisper encoders for Hugging Face Transformers: calibrate, compress, load, transcribe.

`import liteasr_hf` registers the "lite-whisper" model type with AutoConfig, AutoModel and
AutoModelForSpeechSeq2Seq, the `attn_implementation="liteasr"` attention, and the ASR pipeline for lite models.
"""

from .calibration import CompressionConfig, Compressor, compress, save_compressed
from .cpu import cpu_bf16_support, optimize_for_cpu
from .lite_whisper import *  # noqa: F401,F403
from .lite_whisper import __all__ as _model_all

__all__ = [*_model_all, "CompressionConfig", "Compressor", "compress", "cpu_bf16_support", "optimize_for_cpu", "save_compressed"]
__version__ = "0.1.0"
