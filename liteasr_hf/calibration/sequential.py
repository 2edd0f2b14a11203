"""Sequential calibration: compress the encoder layer by layer, each linear seeing upstream error.

The paper collects every linear's statistics on the dense model at once, so every factorization is
fitted to activations the compressed model never produces and errors compound through the stack.
Here the encoder input of every calibration clip is cached once ([N, T, D] hidden states; float32 by
default, `cache_dtype=torch.float16` halves it for large models: large-v3 is 1500 x 1280 x 2 bytes per
clip), and layer l is calibrated on the hidden states produced by layers < l *already compressed*.
Inside a layer the same holds group by group: q/k/v (one shared input), then out_proj (sees the
compressed q/k/v), then fc1, then fc2. Only one layer is ever computed at a time; each statistics
pass stops the layer right after the group's last linear fired.

Statistics are padding-aware like the paper's calibration (`pad_weight`: share of the mean and
covariance given to padding frames; 0.5 = the 50/50 default, None = all frames equal, the paper).
The paper's one-pass method is the default path (`stats.collect` + `stats.spectra` + `factors.factorize`); this
module is the opt-in variant (`CompressionConfig(sequential=...)`).

Factors are keyed by encoder-relative dense module names ("layers.0.self_attn.q_proj") as
`(weight1 [in, k], weight2 [k, out], bias [out])`, the layout `LiteWhisperForConditionalGeneration.
from_whisper` takes; linears whose rank is None stay dense and have no entry.
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch
from torch import nn

from ..lite_whisper.configuration_lite_whisper import LOW_RANK_SHAPES, projection_path
from .factors import low_rank_linear, pca_factors
from .features import DEFAULT_PADDING_WEIGHT, encoder_inputs
from .ranks import is_attention, theta_rank
from .stats import LinearStats

LINEARS = tuple(projection_path(n) for n in LOW_RANK_SHAPES)
# Linears that share an input are fitted together; later groups see the earlier ones compressed.
GROUPS = (LINEARS[:3], LINEARS[3:4], LINEARS[4:5], LINEARS[5:6])


def _set(module: nn.Module, name: str, new: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, child, new)


def _in_out(m: nn.Module):
    return m.in_features, m.out_features


class _Stop(Exception):
    pass


@torch.no_grad()
def _collect(layer: nn.Module, names, cache: torch.Tensor, real: torch.Tensor, batch_size: int):
    """Stream the cached inputs through one layer, accumulate statistics of the named linears'
    outputs, and stop the layer as soon as the last of them has fired."""
    stats = {n: LinearStats(_in_out(layer.get_submodule(n))[1]) for n in names}
    state = {"real": [], "fired": set()}
    p = next(layer.parameters())

    def hook(name):
        def fn(mod, inp, out):
            for y, n in zip(out, state["real"]):
                stats[name].update(y[:n], "real")
                stats[name].update(y[n:], "pad")
            state["fired"].add(name)
            if len(state["fired"]) == len(names):
                raise _Stop  # the rest of the layer is not needed for these statistics

        return fn

    handles = [layer.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for i in range(0, len(cache), batch_size):
            state["real"], state["fired"] = real[i : i + batch_size].tolist(), set()
            try:
                layer(cache[i : i + batch_size].to(p.device, p.dtype), None)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return stats


RankRule = Callable[[str, torch.Tensor, int, int], "int | None"]


def theta_rule(attn: float, mlp: float) -> RankRule:
    """Per-linear θ with separate attention / MLP thresholds (the paper's presets)."""
    return lambda name, evals, d_in, d_out: theta_rank(evals, attn if is_attention(name) else mlp, d_in, d_out)


def fixed_ranks(ranks: Mapping[str, int | None]) -> RankRule:
    """Ranks chosen beforehand (e.g. by sensitivity.allocate); eq. 8 was applied there."""
    return lambda name, evals, d_in, d_out: ranks.get(name)


@torch.no_grad()
def _collect_joint(layer, dense_layer, names, cache, dense_cache, real, batch_size, residual, pad_stride=8):
    """Joint statistics of [compressed-path input x_c, dense target y_d] for the named linears.

    y_d is the linear's output on the dense path. With `residual`, the targets of out_proj and fc2
    also carry the error the residual stream brought in (dense minus compressed hidden state), so
    the last linear of each sublayer is fitted to restore the dense sublayer output. Only every
    `pad_stride`-th padding frame is counted: padding is ~90 % of the frames and very redundant, and
    the joint Gram ((D_in + D_out)^2 per frame) is the cost here; the real/padding mixture weights
    are per part, so subsampling one part leaves the weighting unbiased."""
    mods = {n: layer.get_submodule(n) for n in names}
    stats = {n: LinearStats(sum(_in_out(m))) for n, m in mods.items()}
    got, p = {}, next(layer.parameters())

    def hook(key, last, take_input):
        def fn(mod, inp, out=None):
            got[key] = inp[0] if take_input else out
            if last:
                raise _Stop

        return fn

    handles = []
    for i, n in enumerate(names):  # q/k/v fire in this order; stop each layer after the last
        last = i == len(names) - 1
        handles.append(dense_layer.get_submodule(n).register_forward_hook(hook(("d", n), last, False)))
        handles.append(mods[n].register_forward_hook(hook(("c", n), last, True)))
    if residual:  # the residual stream entering the MLP: the input of final_layer_norm
        for tag, l in (("d", dense_layer), ("c", layer)):
            handles.append(l.final_layer_norm.register_forward_pre_hook(hook((tag, "mid"), False, True)))
    try:
        for i in range(0, len(cache), batch_size):
            hc, hd = (c[i : i + batch_size].to(p.device, p.dtype) for c in (cache, dense_cache))
            for l, h in ((dense_layer, hd), (layer, hc)):
                try:
                    l(h, None)
                except _Stop:
                    pass
            for n in names:
                y = got[("d", n)]
                if residual and n.endswith("out_proj"):
                    y = y + (hd - hc)
                elif residual and n == "fc2":
                    y = y + (got[("d", "mid")] - got[("c", "mid")])
                joint = torch.cat([got[("c", n)], y], -1)
                for z, r in zip(joint, real[i : i + batch_size].tolist()):
                    stats[n].update(z[:r], "real")
                    stats[n].update(z[r::pad_stride], "pad")
    finally:
        for h in handles:
            h.remove()
    return stats


def regression_factors(stats: LinearStats, linear: nn.Module, rule_k, pad_weight, ridge: float = 1e-2):
    """Reduced-rank regression of the dense target on the compressed-path input.

    Full-rank fit W* = (Sxx + λI)^-1 (Sxy + λW) (ridge towards the original weight, since upstream
    compression leaves Sxx rank-deficient), then the top-k principal directions V of the fitted
    outputs X W*: weight1 = W* V, weight2 = V^T, bias = mean_y - mean_x W* V V^T. With an exact
    input (x_c = x_d) and no residual term this is the paper's PCA factorization.
    Returns (factors or None, eigenvalues of the fitted outputs)."""
    d_in, d_out = _in_out(linear)
    mean, cov = stats.moments(pad_weight)
    mx, my = mean[:d_in], mean[d_in:]
    sxx, sxy = cov[:d_in, :d_in], cov[:d_in, d_in:]
    w = (linear.weight.detach().double().T if isinstance(linear, nn.Linear) else (linear.weight1 @ linear.weight2).detach().double()).to(sxx.device)
    lam = ridge * float(torch.diagonal(sxx).mean().clamp(min=1e-12))
    w_star = torch.linalg.solve(sxx + lam * torch.eye(d_in, dtype=sxx.dtype, device=sxx.device), sxy + lam * w)
    c = w_star.T @ sxx @ w_star
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    k = rule_k(evals)
    if k is None:
        return None, evals
    v = evecs[:, :k]
    w1 = w_star @ v
    return (w1, v.T.contiguous(), my - (mx @ w1) @ v.T), evals


def calibrate(
    model: nn.Module,
    features: torch.Tensor,
    real: torch.Tensor,
    rule: RankRule,
    *,
    target: str = "self",
    ridge: float = 1e-2,
    pad_stride: int = 8,
    pad_weight: float | None = DEFAULT_PADDING_WEIGHT,
    batch_size: int = 8,
    cache_dtype: torch.dtype | None = None,
    progress: bool = True,
):
    """Compress the encoder of a dense Whisper model (left untouched) from calibration log-mels.

    features: [N, n_mels, 3000] log-mel; real: [N] real-audio encoder frames per clip (see
    `features.real_frame_count`). Returns (factors, ranks, spectra): factors as documented above, ranks
    {name: k or None}, spectra {name: eigenvalues of the covariance the factors were fitted on}.
    `target`: "self" = PCA of the compressed path's own outputs; "dense" =
    reduced-rank regression of the dense path's outputs on the compressed path's inputs, so each
    linear undoes upstream error (`regression_factors`); "dense+residual" also folds the residual
    stream's error into the out_proj / fc2 targets. "dense*" caches the dense hidden states too and
    counts every `pad_stride`-th padding frame only (see `_collect_joint`).
    """
    if target not in ("self", "dense", "dense+residual"):
        raise ValueError(f"target must be 'self', 'dense' or 'dense+residual', got {target!r}")
    from tqdm.auto import tqdm

    encoder = copy.deepcopy(model.get_encoder() if hasattr(model, "get_encoder") else model).eval()
    cache = encoder_inputs(encoder, features, batch_size, cache_dtype)
    dense_cache = cache.clone() if target != "self" else None
    real = real.to(torch.long)
    factors, ranks, spectra = {}, {}, {}
    bar = tqdm(total=len(encoder.layers) * len(GROUPS), desc="sequential calibration", disable=not progress)
    for li, layer in enumerate(encoder.layers):
        dense_layer = copy.deepcopy(layer) if dense_cache is not None else None
        for group in GROUPS:
            if dense_cache is not None:
                stats = _collect_joint(layer, dense_layer, group, cache, dense_cache, real, batch_size, target == "dense+residual", pad_stride)
                for n in group:
                    lin, key = layer.get_submodule(n), f"layers.{li}.{n}"
                    f, evals = regression_factors(stats[n], lin, lambda ev: rule(key, ev, *_in_out(lin)), pad_weight, ridge)
                    ranks[key], spectra[key] = (None if f is None else f[1].shape[0]), evals.float()
                    if f is not None:
                        factors[key] = tuple(t.to(lin.weight.dtype).contiguous() for t in f)
                        _set(layer, n, low_rank_linear(*(t.to(lin.weight.device) for t in factors[key])))
                bar.update()
                continue
            stats = _collect(layer, group, cache, real, batch_size)
            for n in group:
                mean, evals, evecs = stats[n].pca(pad_weight)
                lin = layer.get_submodule(n)
                key = f"layers.{li}.{n}"
                k = rule(key, evals, *_in_out(lin))
                ranks[key] = k
                spectra[key] = evals.float()
                if k is not None:
                    factors[key] = tuple(t.to(lin.weight.dtype).contiguous() for t in pca_factors(lin, mean, evecs, k))
                    _set(layer, n, low_rank_linear(*(t.to(lin.weight.device) for t in factors[key])))
            bar.update()
        # Next layer's inputs: the compressed layer's outputs.
        with torch.no_grad():
            p = next(layer.parameters())
            for i in range(0, len(cache), batch_size):
                cache[i : i + batch_size] = layer(cache[i : i + batch_size].to(p.device, p.dtype), None).to(cache.dtype).cpu()
                if dense_cache is not None:
                    dense_cache[i : i + batch_size] = dense_layer(dense_cache[i : i + batch_size].to(p.device, p.dtype), None).to(cache.dtype).cpu()
    bar.close()
    return {k: tuple(t.cpu() for t in f) for k, f in factors.items()}, ranks, spectra
