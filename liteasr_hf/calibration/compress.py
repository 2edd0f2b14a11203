"""PCA factors of each linear and the lite model built from them (LiteASR eq. 4-5).

For Y = X W + b with output mean m and leading principal directions V_k [out, k]:
    Y ≈ X (W V_k) V_k^T + (m + (b - m) V_k V_k^T)
Here W = linear.weight.T ([in, out]; nn.Linear stores [out, in]).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .ranks import linear_params
from .stats import DEFAULT_PADDING_WEIGHT, CalibrationStats, encoder_linears


def pca_factors(linear: nn.Linear, mean: torch.Tensor, evecs: torch.Tensor, k: int):
    """(weight1 [in, k], weight2 [k, out], bias [out]) in float64 from the leading k eigenvectors."""
    W = linear.weight.detach().double().T
    mean, Vk = mean.to(W.device, torch.float64), evecs[:, :k].to(W.device, torch.float64)  # on the linear's device
    b = linear.bias.detach().double() if linear.bias is not None else torch.zeros_like(mean)
    bias = mean + ((b - mean) @ Vk) @ Vk.T
    return W @ Vk, Vk.T.contiguous(), bias


def spectra(stats: CalibrationStats, padding_weight: float | None = DEFAULT_PADDING_WEIGHT, progress: bool = False):
    """{name: (mean, eigenvalues desc, eigenvectors)} for every linear in the statistics, on the CPU.

    The eigendecompositions run where the statistics are; the results go to the CPU because on a GPU they
    would sit beside the model through sensitivity probes and refinement (large-v3: 8.8 GB of float64
    eigenvectors). Their users move the columns they keep.
    """
    from tqdm.auto import tqdm

    linears = tqdm(stats.linears.items(), desc="eigendecomposition", unit="linear", disable=not progress)
    return {n: tuple(t.cpu() for t in s.pca(padding_weight)) for n, s in linears}


def linear_dims(encoder: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.in_features, m.out_features) for n, m in encoder_linears(encoder).items()}


def _new_biases(encoder: nn.Module, names) -> int:
    """A low-rank linear always carries a bias (the mean correction), even where the dense one had none (k_proj)."""
    linears = encoder_linears(encoder)
    return sum(linears[n].out_features for n in names if linears[n].bias is None)


def factorize(encoder: nn.Module, pcas: dict, ranks: dict, dtype=None) -> dict:
    """{name: (weight1, weight2, bias)} for every linear with a rank (None = stays dense)."""
    linears = encoder_linears(encoder)
    out = {}
    for n, k in ranks.items():
        if k is None:
            continue
        mean, _, evecs = pcas[n]
        lin = linears[n]
        out[n] = tuple(t.to(lin.weight.device, dtype or lin.weight.dtype).contiguous() for t in pca_factors(lin, mean, evecs, k))
    return out


def encoder_size(encoder: nn.Module, ranks: dict) -> tuple[int, int]:
    """(lite, dense) encoder parameter counts: biases, norms, convs and positions are unchanged."""
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


class LowRankLinear(nn.Module):
    """x -> (x weight1) weight2 + bias, a drop-in for nn.Linear inside a dense model (tests, sequential
    calibration); the checkpoint itself uses the lite model classes."""

    def __init__(self, weight1, weight2, bias):
        super().__init__()
        self.weight1 = nn.Parameter(weight1)
        self.weight2 = nn.Parameter(weight2)
        self.bias = nn.Parameter(bias)
        self.in_features, self.out_features = weight1.shape[0], weight2.shape[1]

    def forward(self, x):
        return (x @ self.weight1) @ self.weight2 + self.bias


def apply_factors_(encoder: nn.Module, factors: dict) -> nn.Module:
    """Swap the named dense linears of `encoder` for LowRankLinear in place."""
    for name, (w1, w2, b) in factors.items():
        parent, leaf = name.rsplit(".", 1)
        setattr(encoder.get_submodule(parent), leaf, LowRankLinear(w1, w2, b))
    return encoder


@torch.no_grad()
def densify(dense_model, lite_model):
    """A copy of `dense_model` whose encoder computes what `lite_model`'s does, every low-rank pair multiplied
    back into one dense weight: the start of a further compression stage (`calibrate.py --stages`), with the
    same parameter shapes, so size budgets stay fractions of the original.

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
    from liteasr_hf import LiteWhisperForConditionalGeneration

    from .ranks import to_low_rank_config

    num_layers = len(dense_model.get_encoder().layers)
    return LiteWhisperForConditionalGeneration.from_whisper(dense_model, to_low_rank_config(ranks, num_layers), factors)
