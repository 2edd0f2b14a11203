"""LiteASR compression of a Whisper encoder, one module per stage of the data flow:

    features.py    calibration windows as the encoder sees them: log-mels, real-audio frames, frame weights
    stats.py       one streaming pass: each linear's output moments (real and padding apart), their PCA (spectra)
    ranks.py       ranks from the spectra: the θ rule, a size budget, parameter accounting
    sensitivity.py ranks for a size by each linear's measured effect on the encoder output
    factors.py     PCA factors and the lite model built from them
    refine.py      opt-in: the factors refined against the dense model (encoder MSE, decoder KL)
    config.py      CompressionConfig: every choice above, validated, serialised into calibration.json
    compressor.py  the recipe: Compressor / compress / save_compressed; load_model, the one checkpoint loader
    card.py        the model card, rendered from calibration.json

    lite = compress(model, processor, clips, CompressionConfig(target_size=0.8))
    save_compressed(lite, "lite-whisper-base", processor)
"""

from .card import INFO_FILE, render_model_card
from .compressor import Compressor, compress, context_only, load_model, load_whisper, save_compressed
from .config import DEFAULT_CONTEXT_BUCKETS, DEFAULT_TARGET_SIZE, CompressionConfig
from .factors import apply_factors_, build_lite_model, factorize, pca_factors
from .features import DEFAULT_PADDING_WEIGHT, real_frame_count
from .ranks import PRESETS, encoder_size, linear_budget, linear_dims, preset_thetas, theta_rank, theta_ranks
from .stats import CalibrationStats, LinearStats, collect, spectra

__all__ = [
    "DEFAULT_CONTEXT_BUCKETS", "DEFAULT_PADDING_WEIGHT", "DEFAULT_TARGET_SIZE", "INFO_FILE", "PRESETS", "CalibrationStats",
    "CompressionConfig", "Compressor", "LinearStats", "apply_factors_", "build_lite_model", "collect", "compress",
    "context_only", "encoder_size", "load_model", "load_whisper", "factorize", "linear_budget", "linear_dims", "pca_factors", "preset_thetas",
    "real_frame_count", "render_model_card", "save_compressed", "spectra", "theta_rank", "theta_ranks",
]
