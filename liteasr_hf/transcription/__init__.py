"""Transcription of recordings of any length: `Transcriber` / `transcribe`, audio decoding, subtitle and JSON writers.

Package-only (never shipped inside a checkpoint). Heavy dependencies (PyAV, Silero VAD) load on first use.
"""

from .engine import Transcriber, VadOptions, transcribe
from .result import Segment, Transcription, Word

__all__ = ["Segment", "Transcriber", "Transcription", "VadOptions", "Word", "transcribe"]
