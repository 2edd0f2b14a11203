"""Sequential calibration and sensitivity allocation on a tiny random Whisper (CPU, seconds)."""

import copy

import torch

from modeling_utils import SMALL_MELS, tiny_features, tiny_whisper

from liteasr_hf.calibration.factors import apply_factors_, factorize
from liteasr_hf.calibration.features import frame_weights
from liteasr_hf.calibration.ranks import linear_budget, linear_dims, linear_params, theta_ranks
from liteasr_hf.calibration.sensitivity import allocate, measure_gains
from liteasr_hf.calibration.sequential import calibrate, fixed_ranks
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


def test_sequential_full_rank_reproduces_dense():
    model, (feats, real) = tiny_whisper(**SMALL_MELS), tiny_features()
    # θ -> 1 keeps every component; eq. 8 would keep such linears dense, so force full ranks.
    ranks = {n: d_out for n, (_, d_out) in linear_dims(model.get_encoder()).items()}
    candidates = {"one pass": factorize(model.get_encoder(), one_pass(model, feats, real), ranks)}
    for target in ("self", "dense+residual"):
        candidates[target], got, _ = calibrate(model, feats, real, fixed_ranks(ranks), target=target, progress=False)
        assert got == ranks
    for factors in candidates.values():
        assert len(factors) == len(ranks)
        lite = apply_factors_(copy.deepcopy(model.get_encoder()), factors)
        with torch.no_grad():
            ref = model.get_encoder()(feats).last_hidden_state
            torch.testing.assert_close(lite(feats).last_hidden_state, ref, rtol=1e-4, atol=1e-4)


def test_error_compensation_beats_the_paper_at_equal_ranks():
    model, (feats, real) = tiny_whisper(**SMALL_MELS), tiny_features(n=12)
    enc = model.get_encoder()
    pcas = one_pass(model, feats, real)
    ranks = theta_ranks({n: p[1] for n, p in pcas.items()}, linear_dims(enc), 0.9, 0.9)
    assert all(k is None or k % 16 == 0 for k in ranks.values()) and any(ranks.values())
    errs = {}
    candidates = {"self": factorize(enc, pcas, ranks)}  # the paper's one-pass factors
    for target in ("dense", "dense+residual"):
        candidates[target], _, _ = calibrate(model, feats, real, fixed_ranks(ranks), target=target, progress=False)
    for target, factors in candidates.items():
        lite = apply_factors_(copy.deepcopy(enc), factors)
        with torch.no_grad():
            w = frame_weights(real, 60)
            errs[target] = float((((lite(feats).last_hidden_state - enc(feats).last_hidden_state) ** 2).mean(-1) * w).sum())
    assert errs["dense+residual"] < errs["dense"] < 0.8 * errs["self"], errs


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
