"""PCA factors of each linear and the lite model built from them (LiteASR eq. 4-5).

For Y = X W + b with output mean m and leading principal directions V_k [out, k]:
    Y ≈ X (W V_k) V_k^T + (m + (b - m) V_k V_k^T)
Here W = linear.weight.T ([in, out]; nn.Linear stores [out, in]).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..lite_whisper.modeling_lite_whisper import LowRankLinear
from .stats import encoder_linears


def pca_factors(linear: nn.Linear, mean: torch.Tensor, evecs: torch.Tensor, k: int):
    """(weight1 [in, k], weight2 [k, out], bias [out]) in float64 from the leading k eigenvectors."""
    W = linear.weight.detach().double().T
    mean, Vk = mean.to(W.device, torch.float64), evecs[:, :k].to(W.device, torch.float64)  # on the linear's device
    b = linear.bias.detach().double() if linear.bias is not None else torch.zeros_like(mean)
    bias = mean + ((b - mean) @ Vk) @ Vk.T
    return W @ Vk, Vk.T.contiguous(), bias


def factorize(encoder: nn.Module, pcas: dict, ranks: dict, dtype=None) -> dict:
    """{name: (weight1, weight2, bias)} for every linear with a rank (None = stays dense), on its device, in its
    dtype (or `dtype`)."""
    linears = encoder_linears(encoder)
    out = {}
    for n, k in ranks.items():
        if k is None:
            continue
        mean, _, evecs = pcas[n]
        lin = linears[n]
        out[n] = tuple(t.to(lin.weight.device, dtype or lin.weight.dtype).contiguous() for t in pca_factors(lin, mean, evecs, k))
    return out


def low_rank_linear(weight1: torch.Tensor, weight2: torch.Tensor, bias: torch.Tensor) -> LowRankLinear:
    """The checkpoint's LowRankLinear holding these factors (their device and dtype)."""
    m = LowRankLinear(weight1.shape[0], weight2.shape[1], weight1.shape[1]).to(weight1.device, weight1.dtype)
    with torch.no_grad():
        for p, t in zip((m.weight1, m.weight2, m.bias), (weight1, weight2, bias)):
            p.copy_(t)
    return m


def apply_factors_(encoder: nn.Module, factors: dict) -> nn.Module:
    """Swap the named dense linears of `encoder` (any Whisper encoder) for LowRankLinear in place."""
    for name, (w1, w2, b) in factors.items():
        parent, leaf = name.rsplit(".", 1)
        setattr(encoder.get_submodule(parent), leaf, low_rank_linear(w1, w2, b))
    return encoder


@torch.no_grad()
def densify(dense_model, lite_model):
    """A copy of `dense_model` whose encoder computes what `lite_model`'s does, every low-rank pair multiplied
    back into one dense weight: the start of a further compression stage, with the same parameter shapes, so size
    budgets stay fractions of the original.

    Where the dense linear has no bias (Whisper's k_proj), the pair's bias is dropped: adding one vector to
    every key shifts all of a query's scores by the same amount, which the softmax cancels."""
    lite = lite_model.get_encoder().state_dict()
    for name, m in encoder_linears(dense_model.get_encoder()).items():
        if m.bias is None and f"{name}.weight1" in lite and not name.endswith("k_proj"):
            raise ValueError(f"{name} has no bias in the dense model, and only k_proj's bias cancels in attention")
    model = copy.deepcopy(dense_model)
    encoder, state = model.get_encoder(), {}
    for key in encoder.state_dict():
        module, part = key.rsplit(".", 1)
        if f"{module}.weight1" not in lite:
            state[key] = lite[key]
        elif part == "weight":
            state[key] = (lite[f"{module}.weight1"].double() @ lite[f"{module}.weight2"].double()).T
        else:
            state[key] = lite[f"{module}.bias"]
    encoder.load_state_dict(state)  # copies into the dense dtype and device
    return model


def build_lite_model(dense_model, ranks: dict, factors: dict):
    """The lite Whisper model (model classes of liteasr_hf) carrying these factors."""
    from ..lite_whisper import LiteWhisperForConditionalGeneration
    from .ranks import to_low_rank_config

    num_layers = len(dense_model.get_encoder().layers)
    return LiteWhisperForConditionalGeneration.from_whisper(dense_model, to_low_rank_config(ranks, num_layers), factors)
