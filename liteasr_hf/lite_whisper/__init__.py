"""Lite-Whisper for Transformers. The flat files here also ship inside every saved checkpoint (trust_remote_code);
this __init__ is the package-only part: Auto-class and ASR pipeline registration, and checkpoint helpers."""

import os
import shutil

from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq, AutomaticSpeechRecognitionPipeline
from transformers.pipelines import PIPELINE_REGISTRY

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


def _dotted(impl):  # the registry holds a class (transformers 5.17) or its dotted path (5.25)
    return impl if isinstance(impl, str) else f"{impl.__module__}.{impl.__qualname__}"


# pipeline("automatic-speech-recognition", ...) takes its class from the task's registry entry for a model object, and
# for a folder whose config has no `custom_pipelines` (the package's config class drops it, so that a folder needs no
# trust_remote_code): the entry is the only place that reaches both. LiteWhisperASRPipeline builds the stock pipeline
# for every other model, so only lite models change. Replaced in place, once, so the task keeps its default model and
# model classes; a pipeline someone else registered for the task is left alone.
_ASR_TASK = PIPELINE_REGISTRY.supported_tasks["automatic-speech-recognition"]
if _dotted(_ASR_TASK["impl"]) == _dotted(AutomaticSpeechRecognitionPipeline):
    _ASR_TASK["impl"] = LiteWhisperASRPipeline


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
