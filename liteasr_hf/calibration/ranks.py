"""Rank selection: the θ rule with the eq. 8 efficiency rule (LiteASR §3.2), presets, and a size budget.

A rank of None means "keep the linear dense". Ranks are multiples of `multiple` (16: tensor-core friendly).
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import nn

from ..lite_whisper.configuration_lite_whisper import ATTENTION_PROJECTIONS
from .stats import encoder_linears

# LiteASR presets: (θ attention, θ MLP).
PRESETS = {"quality": (0.999, 0.999), "balanced": (0.99, 0.999), "fast": (0.99, 0.995)}
PRESET_ALIASES = {"a": "quality", "b": "balanced", "c": "fast"}


def preset_thetas(preset: str) -> tuple[float, float]:
    name = PRESET_ALIASES.get(preset, preset)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (or a/b/c)")
    return PRESETS[name]


def check_theta(theta: float, what: str = "theta") -> float:
    if not 0.0 < theta < 1.0:
        raise ValueError(f"{what} must lie strictly between 0 and 1 (a fraction of variance to keep), got {theta}")
    return theta


def is_attention(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS


def worth_it(k: int, d_in: int, d_out: int) -> bool:
    """Eq. 8: the two factors must hold fewer parameters than the dense weight."""
    return k * (d_in + d_out) < d_in * d_out


def explained(evals: torch.Tensor) -> torch.Tensor:
    """Cumulative fraction of variance held by the leading 1, 2, ... components."""
    evals = evals.double().clamp_min(0)
    total = evals.sum()
    if total <= 0:
        return torch.ones_like(evals)
    return evals.cumsum(0) / total


def theta_rank(evals: torch.Tensor, theta: float, d_in: int, d_out: int, multiple: int = 16) -> int | None:
    """Eq. 6 + 8: the smallest multiple of `multiple` whose leading components hold more than θ of
    the variance, or None (dense) when that rank would not save parameters."""
    frac = explained(evals)
    above = (frac > theta).nonzero()
    k_min = int(above[0]) + 1 if len(above) else len(frac)
    k = math.ceil(k_min / multiple) * multiple
    return k if worth_it(k, d_in, d_out) else None


def theta_ranks(spectra: dict, dims: dict, theta_attn: float, theta_mlp: float, multiple: int = 16) -> dict:
    """Per-linear θ rule; `spectra` maps names to eigenvalues, `dims` to (d_in, d_out)."""
    return {
        n: theta_rank(ev, theta_attn if is_attention(n) else theta_mlp, *dims[n], multiple)
        for n, ev in spectra.items()
    }


def linear_params(k: int | None, d_in: int, d_out: int) -> int:
    """Weight parameters of a linear at rank k (dense when None); the bias is the same either way."""
    return d_in * d_out if k is None else k * (d_in + d_out)


def linear_dims(encoder: nn.Module) -> dict[str, tuple[int, int]]:
    """{linear: (d_in, d_out)} of the encoder's compressible linears."""
    return {n: (m.in_features, m.out_features) for n, m in encoder_linears(encoder).items()}


def _new_biases(encoder: nn.Module, names) -> int:
    """A low-rank linear always carries a bias (the mean correction), even where the dense one had none (k_proj)."""
    linears = encoder_linears(encoder)
    return sum(linears[n].out_features for n in names if linears[n].bias is None)


def encoder_size(encoder: nn.Module, ranks: dict) -> tuple[int, int]:
    """(lite, dense) parameter counts of a dense encoder compressed to `ranks`: biases, norms, convs and positions
    are unchanged."""
    dense = sum(p.numel() for p in encoder.parameters())
    dims = linear_dims(encoder)
    saved = sum(linear_params(None, *dims[n]) - linear_params(k, *dims[n]) for n, k in ranks.items())
    return dense - saved + _new_biases(encoder, [n for n, k in ranks.items() if k is not None]), dense


def linear_budget(encoder: nn.Module, target: float) -> int:
    """Weight parameters left for the compressible linears when the encoder is `target` of its dense size."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target size must lie in (0, 1] (a fraction of the dense encoder), got {target}")
    dense = sum(p.numel() for p in encoder.parameters())
    dims = linear_dims(encoder)
    # reserve the biases that compressing bias-less linears adds, so the budget holds whatever gets compressed
    fixed = dense - sum(linear_params(None, *d) for d in dims.values()) + _new_biases(encoder, dims)
    budget = int(target * dense) - fixed
    if budget <= 0:
        raise ValueError(f"target size {target} is below the encoder's incompressible part ({fixed / dense:.1%})")
    return budget


def greedy_ranks(spectra: dict, dims: dict, budget: int, value, multiple: int = 16) -> dict:
    """Ranks under a parameter budget for the linears' weights, which is never exceeded.

    Every linear starts at rank `multiple`; then the step (next +`multiple` components, or going dense once
    the next rank fails eq. 8) with the most `value(name, k, next_k)` (next_k None = dense) per parameter
    spent is taken, as long as it fits.
    """
    ranks = {n: multiple for n in spectra}
    used = sum(linear_params(multiple, *dims[n]) for n in spectra)
    if any(not worth_it(multiple, *dims[n]) for n in spectra):
        raise ValueError(f"a linear is too small for rank {multiple}; nothing to compress")
    if used > budget:
        raise ValueError(f"budget of {budget:,} weight parameters is below the minimum ({used:,}: every linear at rank {multiple})")

    def step(n):
        """(priority, n, next rank, cost) of the next step of linear n, or None when it is dense."""
        k = ranks[n]
        if k is None:
            return None
        d_in, d_out = dims[n]
        nxt = k + multiple if worth_it(k + multiple, d_in, d_out) and k + multiple < len(spectra[n]) else None
        cost = linear_params(nxt, d_in, d_out) - linear_params(k, d_in, d_out)
        return (-value(n, k, nxt) / cost, n, nxt, cost)

    heap = [s for s in map(step, spectra) if s is not None]
    heapq.heapify(heap)
    while heap:
        _, n, nxt, cost = heapq.heappop(heap)
        if used + cost > budget:
            continue  # this linear cannot grow further within the budget; smaller steps elsewhere may still fit
        ranks[n], used = nxt, used + cost
        s = step(n)
        if s is not None:
            heapq.heappush(heap, s)
    return ranks


def to_low_rank_config(ranks: dict, num_layers: int) -> list[dict]:
    """The lite config's layout: one dict per encoder layer, {linear: rank}; dense linears are left out."""
    config = [{} for _ in range(num_layers)]
    for name, k in ranks.items():
        if k is not None:
            _, layer, *_, leaf = name.split(".")
            config[int(layer)][leaf] = int(k)
    return config
