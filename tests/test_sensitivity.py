"""Frame weights and sensitivity allocation on a tiny random Whisper (CPU, seconds)."""

import torch

from modeling_utils import SMALL_MELS, tiny_features, tiny_whisper

from liteasr_hf.calibration.features import frame_weights
from liteasr_hf.calibration.ranks import linear_budget, linear_dims, linear_params
from liteasr_hf.calibration.sensitivity import allocate, measure_gains
from liteasr_hf.calibration.stats import CalibrationStats, spectra


def one_pass(model, feats, real, pad_weight=0.5):
    """The paper's path on precomputed log-mels: dense statistics, their PCA."""
    enc = model.get_encoder()
    return spectra(CalibrationStats.for_encoder(enc).add(enc, feats, real.tolist()), pad_weight)


def test_frame_weights_sum_to_one_and_split():
    w = frame_weights(torch.tensor([10, 60]), 60, 0.5)
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    torch.testing.assert_close(w[0, :10].sum(), torch.tensor(0.5))
    torch.testing.assert_close(frame_weights(torch.tensor([10]), 60, None)[0], torch.full((60,), 1 / 60))


def test_allocate_never_exceeds_budget():
    g = torch.Generator().manual_seed(0)
    dims = {f"layers.{i}.fc{j}": (64, 256) if j == 1 else (256, 64) for i in range(3) for j in (1, 2)}
    spectra = {n: torch.rand(64, generator=g).sort(descending=True).values ** 3 for n in dims}
    gains = {n: float(torch.rand(1, generator=g)) * 10 for n in dims}
    for budget in (6 * 16 * 320, 40_000, 60_000, 90_000):
        ranks = allocate(spectra, dims, gains, budget)
        used = sum(linear_params(k, *dims[n]) for n, k in ranks.items())
        assert used <= budget and all(k is None or (k % 16 == 0 and k * 320 < 64 * 256) for k in ranks.values())
    # A linear with zero gain never grows past the minimum while others can.
    gains["layers.0.fc1"] = 0.0
    assert allocate(spectra, dims, gains, 60_000)["layers.0.fc1"] == 16


def test_sensitivity_ranks_fit_target():
    model, (feats, real) = tiny_whisper(**SMALL_MELS), tiny_features()
    pcas = one_pass(model, feats, real)
    enc = model.get_encoder()
    gains = measure_gains(model, feats[:3], real[:3], pcas, progress=False)
    assert all(g > 0 for g in gains.values())
    dims = linear_dims(enc)
    for target in (0.8, 0.9):
        ranks = allocate({n: p[1] for n, p in pcas.items()}, dims, gains, linear_budget(enc, target))
        saved = sum(linear_params(None, *dims[n]) - linear_params(k, *dims[n]) for n, k in ranks.items())
        assert sum(p.numel() for p in enc.parameters()) - saved <= target * sum(p.numel() for p in enc.parameters())
