"""Real Whisper weights offline: CTranslate2 (faster-whisper) folders -> HF Whisper, and the bundled models."""

from .bundled import BUNDLED_MODELS, DEFAULT_MODEL, HUB_ORIGINALS, TEST_MODEL, cache_dir, first_line, load_error, looks_like_path, resolve_model
from .ctranslate2 import CT2FormatError, CT2Model, convert_ct2, read_ct2

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "HUB_ORIGINALS",
    "TEST_MODEL",
    "CT2FormatError",
    "CT2Model",
    "cache_dir",
    "convert_ct2",
    "first_line",
    "load_error",
    "looks_like_path",
    "read_ct2",
    "resolve_model",
]
