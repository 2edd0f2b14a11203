"""Evaluation: WER on real speech (Whisper normalizer, jiwer via `evaluate`), encoder size and FLOPs,
the compression sweep with its Pareto plot and rank heatmap, and results in model cards."""

from .card import model_index, record_in_model_card
from .flops import encoder_cost
from .run import ESB_DATASET, ESB_SUBSETS, evaluate_model, load_groups, load_model, markdown, transcribe, write_json
from .wer import normalize, word_errors

__all__ = [
    "ESB_DATASET", "ESB_SUBSETS", "encoder_cost", "evaluate_model", "load_groups", "load_model", "markdown",
    "model_index", "normalize", "record_in_model_card", "transcribe", "word_errors", "write_json",
]
