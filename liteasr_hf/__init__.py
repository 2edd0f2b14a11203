"""LiteASR low-rank Whisper encoders for Hugging Face Transformers: calibrate, compress, load, transcribe.

`import liteasr_hf` registers the "lite-whisper" model type with AutoConfig, AutoModel and
AutoModelForSpeechSeq2Seq, the `attn_implementation="liteasr"` attention, and the ASR pipeline for lite models.
"""

from .lite_whisper import *  # noqa: F401,F403
from .lite_whisper import __all__

__version__ = "0.1.0"
