"""Lite-Whisper for Transformers. The flat files here also ship inside every saved checkpoint (trust_remote_code);
this __init__ is the package-only part: Auto-class registration and checkpoint helpers."""

import os
import shutil

from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq

from .configuration_lite_whisper import LOW_RANK_SHAPES, LiteWhisperConfig
from .modeling_lite_whisper import (
    ATTN_IMPLEMENTATION,
    LiteWhisperAttention,
    LiteWhisperEncoder,
    LiteWhisperEncoderLayer,
    LiteWhisperForConditionalGeneration,
    LiteWhisperModel,
    LiteWhisperPreTrainedModel,
    LowRankLinear,
)
from .pipeline_lite_whisper import LiteWhisperASRPipeline

AutoConfig.register(LiteWhisperConfig.model_type, LiteWhisperConfig, exist_ok=True)
# AutoModel gives the generation model, as the published LiteASR model cards use AutoModel(...).generate(...).
AutoModel.register(LiteWhisperConfig, LiteWhisperForConditionalGeneration, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(LiteWhisperConfig, LiteWhisperForConditionalGeneration, exist_ok=True)


def save_lite_checkpoint(model, out_dir, processor=None):
    """Everything `pipeline("automatic-speech-recognition", model=out_dir)` needs: weights, config with auto_map and
    custom pipeline, code files, generation config, and the processor files (feature extractor + tokenizer) when
    `processor` is given."""
    model.save_pretrained(out_dir)
    if processor is not None:
        processor.save_pretrained(out_dir)
        # The English spelling map (EnglishTextNormalizer(tokenizer.english_spelling_normalizer), as the Open ASR
        # Leaderboard scores): Whisper repos carry it, but transformers 5 save_pretrained does not write it.
        from ..conversion.ctranslate2 import NORMALIZER_JSON

        shutil.copyfile(NORMALIZER_JSON, os.path.join(out_dir, "normalizer.json"))
    return out_dir


__all__ = [
    "ATTN_IMPLEMENTATION", "LOW_RANK_SHAPES", "LiteWhisperASRPipeline", "LiteWhisperAttention", "LiteWhisperConfig",
    "LiteWhisperEncoder", "LiteWhisperEncoderLayer", "LiteWhisperForConditionalGeneration", "LiteWhisperModel",
    "LiteWhisperPreTrainedModel", "LowRankLinear", "save_lite_checkpoint",
]
