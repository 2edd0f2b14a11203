"""LiteASR calibration: streaming activation statistics, rank selection, PCA factors, model card.

    stats = collect(model, processor.feature_extractor, windows)          # stats.py
    pcas = spectra(stats, padding_weight=0.5)                              # compress.py
    ranks = theta_ranks({n: p[1] for n, p in pcas.items()}, linear_dims(encoder), 0.99, 0.999)   # ranks.py
    lite = build_lite_model(model, ranks, factorize(encoder, pcas, ranks))
"""

from .card import render_model_card
from .compress import apply_factors_, build_lite_model, encoder_size, factorize, linear_budget, linear_dims, pca_factors, spectra
from .ranks import PRESETS, preset_thetas, target_ranks, theta_rank, theta_ranks, to_low_rank_config
from .stats import DEFAULT_PADDING_WEIGHT, CalibrationStats, LinearStats, collect, real_frame_count

__all__ = [
    "DEFAULT_PADDING_WEIGHT", "PRESETS", "CalibrationStats", "LinearStats", "apply_factors_", "build_lite_model", "collect",
    "encoder_size", "factorize", "linear_budget", "linear_dims", "pca_factors", "preset_thetas", "real_frame_count",
    "render_model_card", "spectra", "target_ranks", "theta_rank", "theta_ranks", "to_low_rank_config",
]
