"""Encoder parameters and FLOPs per 30 s window, analytic from a (Lite)Whisper config.

FLOPs count the matrix products (2 per multiply-add): the two input convolutions, every linear, and
attention's QK^T and AV. Norms, GELU, softmax and biases are left out (well under 1 % of the total).
A linear of rank k costs k (d_in + d_out) multiply-adds per frame instead of d_in d_out and holds an
extra bias for k_proj, which is bias-free when dense (the published LiteASR layout).
"""

from __future__ import annotations

from ..lite_whisper.configuration_lite_whisper import LOW_RANK_SHAPES


def _linears(c) -> dict[str, tuple[int, int, bool]]:
    """(d_in, d_out, dense has bias) of the encoder linears of a layer: Whisper's k_proj has no bias."""
    return {n: (*shape(c), n != "k_proj") for n, shape in LOW_RANK_SHAPES.items()}


def encoder_cost(config) -> dict:
    """{"params", "flops"} of the encoder the config describes (ranks from `low_rank_config` if any) and
    {"dense_params", "dense_flops"} of the same encoder with every linear dense."""
    d, T, mels = config.d_model, config.max_source_positions, config.num_mel_bins
    L = config.encoder_layers
    ranks = getattr(config, "low_rank_config", None) or [{} for _ in range(L)]
    # conv1: mels -> d over 2T frames, conv2: d -> d over T frames (stride 2), kernel 3; positions; final norm.
    fixed_params = (mels * d * 3 + d) + (d * d * 3 + d) + T * d + 2 * d
    fixed_flops = 2 * 3 * (2 * T * mels * d + T * d * d)
    per_layer_params = 4 * d  # two layer norms
    attn_flops = 2 * 2 * T * T * d  # QK^T and AV over all heads
    out = {"params": fixed_params + L * per_layer_params, "flops": fixed_flops + L * attn_flops}
    out["dense_params"], out["dense_flops"] = out["params"], out["flops"]
    for layer in ranks:
        for name, (d_in, d_out, bias) in _linears(config).items():
            dense_p, dense_f = d_in * d_out + bias * d_out, 2 * T * d_in * d_out
            k = layer.get(name)
            out["dense_params"] += dense_p
            out["dense_flops"] += dense_f
            out["params"] += dense_p if k is None else k * (d_in + d_out) + d_out
            out["flops"] += dense_f if k is None else 2 * T * k * (d_in + d_out)
    return out
