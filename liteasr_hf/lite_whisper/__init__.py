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

# What Whisper's generate() reads for language, task, timestamps and prompts. Published lite checkpoints lack them.
WHISPER_GENERATION_FIELDS = (
    "lang_to_id", "task_to_id", "is_multilingual", "no_timestamps_token_id", "max_initial_timestamp_index",
    "prev_sot_token_id", "alignment_heads", "suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids",
    "decoder_start_token_id", "return_timestamps", "language", "task",
)


def complete_generation_config(model, reference) -> list[str]:
    """Copy the Whisper fields `model.generation_config` lacks from `reference` (the dense model's generation
    config). Returns the names filled."""
    filled = []
    for name in WHISPER_GENERATION_FIELDS:
        value = getattr(reference, name, None)
        if getattr(model.generation_config, name, None) is None and value is not None:
            setattr(model.generation_config, name, value)
            filled.append(name)
    return filled


def save_lite_checkpoint(model, out_dir, processor=None, dense_generation_config=None):
    """Everything `pipeline("automatic-speech-recognition", model=out_dir)` needs: weights, config with auto_map and
    custom pipeline, code files, generation config (completed from `dense_generation_config` if given), and the
    processor files (feature extractor + tokenizer) when `processor` is given."""
    if dense_generation_config is not None:
        complete_generation_config(model, dense_generation_config)
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
    "LiteWhisperPreTrainedModel", "LowRankLinear", "complete_generation_config", "save_lite_checkpoint",
]
