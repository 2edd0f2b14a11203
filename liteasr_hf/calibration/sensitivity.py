"""Rank allocation for a size target by measured sensitivity, not by each linear's own variance.

The variance rule treats a discarded unit of variance alike everywhere, yet the same local error is
amplified or damped very differently on its way to the encoder output (residual stream, layer norms,
softmax, GELU). Here each linear's *gain* is measured once on a few calibration clips: truncate that
linear alone to a probe rank, run the dense encoder from its layer on, and divide the error at the
encoder's final output by the error at the linear's own output (both weighted real/padding like the
statistics, since the decoder attends to padding too). The discarded eigenvalues of a linear, times
its gain, then estimate what each rank step buys at the output, and ranks are allocated greedily by
that per parameter spent, in multiples of 16 and with the eq. 8 rule, never above the budget.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .features import DEFAULT_PADDING_WEIGHT, frame_weights
from .ranks import greedy_ranks, theta_rank

PROBE_CLIPS = 8  # the first this many calibration windows measure the gains (more did no better: docs/results.md)


class _Probe(nn.Module):
    """Returns the rank-k PCA output of a linear and records its weighted squared error."""

    def __init__(self, linear, mean, evecs, k, weights):
        super().__init__()
        self.linear, self.weights, self.err = linear, weights, 0.0
        v = evecs[:, :k].to(linear.weight)
        self.proj, self.mean = v @ v.T, mean.to(linear.weight)

    def forward(self, x):
        y = self.linear(x)
        yk = (y - self.mean) @ self.proj + self.mean
        self.err += float((((y - yk) ** 2).sum(-1) * self.weights).sum())
        return yk


@torch.no_grad()
def measure_gains(
    model: nn.Module,
    features: torch.Tensor,
    real: torch.Tensor,
    pcas: dict,
    *,
    probe_theta: float = 0.99,
    pad_weight: float | None = DEFAULT_PADDING_WEIGHT,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, float]:
    """{linear: final-output error / own-output error} when that linear alone is cut to the rank
    keeping `probe_theta` of its variance (capped to the largest rank eq. 8 allows).

    features/real: the probe clips (a few suffice); pcas: {name: (mean, evals, evecs)} of the dense
    statistics (`stats.spectra`).
    """
    from tqdm.auto import tqdm

    encoder = copy.deepcopy(model.get_encoder() if hasattr(model, "get_encoder") else model).eval()
    p = next(encoder.parameters())
    dev = p.device
    # The dense encoder's own forward on the few probe clips (kept on the device): every layer's input, the output.
    per_batch = [encoder(input_features=f.to(dev, p.dtype), output_hidden_states=True).hidden_states
                 for f in features.split(batch_size)]
    *hidden, ref = (torch.cat(states) for states in zip(*per_batch))
    w = frame_weights(real.to(torch.long), ref.shape[1], pad_weight).to(dev)
    gains = {}
    for name in tqdm(pcas, desc="sensitivity", unit="linear", disable=not progress):
        mean, evals, evecs = pcas[name]
        li = int(name.split(".")[1])
        lin = encoder.get_submodule(name)
        d_in, d_out = lin.in_features, lin.out_features
        k = theta_rank(evals, probe_theta, d_in, d_out) or max(16, 16 * ((d_in * d_out // (d_in + d_out) - 1) // 16))
        parent, leaf = name.rsplit(".", 1)
        probe = _Probe(lin, mean, evecs, k, None)
        setattr(encoder.get_submodule(parent), leaf, probe)
        final = 0.0
        try:
            for i in range(0, len(ref), batch_size):
                probe.weights = w[i : i + batch_size]
                h = hidden[li][i : i + batch_size]
                for layer in encoder.layers[li:]:
                    h = layer(h, None)
                final += float((((encoder.layer_norm(h) - ref[i : i + batch_size]) ** 2).sum(-1) * probe.weights).sum())
        finally:
            setattr(encoder.get_submodule(parent), leaf, lin)
        gains[name] = final / max(probe.err, 1e-30)
    return gains


def allocate(spectra: dict, dims: dict, gains: dict, budget: int, multiple: int = 16) -> dict:
    """Greedy ranks under a weight-parameter budget (never exceeded): each step is scored by gain x the
    variance it keeps, in absolute units, per parameter it costs, so linears compete on their effect at the output."""
    cum = {n: torch.cat([torch.zeros(1, dtype=torch.float64), ev.double().cpu().clamp_min(0).cumsum(0)]) for n, ev in spectra.items()}

    def value(n, k, nxt):
        return float(cum[n][-1 if nxt is None else nxt] - cum[n][k]) * gains[n]

    return greedy_ranks(spectra, dims, budget, value, multiple)
