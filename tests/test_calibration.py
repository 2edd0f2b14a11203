"""Calibration maths on small data and a tiny random Whisper: streaming PCA, weighting, merging, disk
round trip, rank rules, target budget, and the factors' exactness."""

import numpy as np
import pytest
import torch

from liteasr_hf.calibration.factors import apply_factors_, factorize, pca_factors
from liteasr_hf.calibration.features import real_frame_count
from liteasr_hf.calibration.ranks import (
    encoder_size,
    linear_budget,
    linear_dims,
    preset_thetas,
    theta_rank,
    theta_ranks,
    to_low_rank_config,
    worth_it,
)
from liteasr_hf.calibration.sensitivity import allocate
from liteasr_hf.calibration.stats import CalibrationStats, LinearStats, collect, spectra
from modeling_utils import CHUNK_SECONDS, tiny_processor, tiny_whisper


def test_streaming_pca_equals_svd():
    torch.manual_seed(0)
    Y = torch.randn(700, 24, dtype=torch.float64) @ torch.randn(24, 24, dtype=torch.float64) + 3.0
    s = LinearStats(24)
    for chunk in Y.split(97):
        s.update(chunk)
    mean, evals, evecs = s.pca(padding_weight=None)
    Yc = Y - Y.mean(0)
    _, sv, Vh = torch.linalg.svd(Yc, full_matrices=False)
    torch.testing.assert_close(mean, Y.mean(0))
    torch.testing.assert_close(evals, sv**2 / len(Y), rtol=1e-9, atol=1e-9)
    for k in (1, 5, 12):  # same principal subspaces (eigenvectors are defined up to sign)
        P1, P2 = evecs[:, :k] @ evecs[:, :k].T, Vh[:k].T @ Vh[:k]
        torch.testing.assert_close(P1, P2, rtol=1e-7, atol=1e-7)


def test_padding_weight_mixture():
    torch.manual_seed(0)
    real, pad = torch.randn(300, 8, dtype=torch.float64), 5 * torch.randn(300, 8, dtype=torch.float64) + 1
    s = LinearStats(8)
    s.update(real, "real")
    s.update(pad, "pad")
    # Equal counts: 50/50 weighting is plain pooling; weight 0 keeps only real frames.
    both = torch.cat([real, pad])
    torch.testing.assert_close(s.moments(0.5)[1], torch.cov(both.T, correction=0))
    torch.testing.assert_close(s.moments(None)[1], torch.cov(both.T, correction=0))
    torch.testing.assert_close(s.moments(0.0)[1], torch.cov(real.T, correction=0))
    with pytest.raises(ValueError):
        s.moments(1.5)


def test_real_frame_count():
    assert real_frame_count(16000) == 50
    assert real_frame_count(321) == 2
    assert real_frame_count(16000 * 45) == 1500


# ---- a tiny random Whisper --------------------------------------------------------------------------

CHUNK_S = CHUNK_SECONDS  # short windows (1 s: 50 encoder frames), so tests stay fast


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_whisper(), tiny_processor(tmp_path_factory.mktemp("vocab")).feature_extractor


def windows(n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        secs = rng.uniform(0.3, CHUNK_S)
        t = np.arange(int(secs * 16000)) / 16000
        audio = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(len(t))
        yield f"w{seed}-{i}", audio.astype(np.float32)


def collect_tiny(tiny, items, **kw):
    model, fe = tiny
    return collect(model, fe, items, batch_size=3, progress=False, **kw)


def test_merge_halves_equals_one_pass(tiny, tmp_path):
    items = list(windows(8))
    full = collect_tiny(tiny, items)
    a, b = collect_tiny(tiny, items[:3]), collect_tiny(tiny, items[3:])
    # save/load round trip on one half, then merge
    a.save(str(tmp_path / "a.safetensors"))
    a = CalibrationStats.load(str(tmp_path / "a.safetensors"))
    merged = a.merge_(b)
    assert sorted(merged.seen) == sorted(full.seen)
    assert merged.frames() == full.frames()
    assert full.frames()["real"] == sum(real_frame_count(len(x)) for _, x in items)
    for n, s in full.linears.items():
        for p in ("real", "pad"):
            torch.testing.assert_close(merged[n].gram[p], s.gram[p], rtol=1e-9, atol=1e-6)
            torch.testing.assert_close(merged[n].sum[p], s.sum[p], rtol=1e-9, atol=1e-6)
    with pytest.raises(ValueError, match="overlap"):
        merged.merge_(collect_tiny(tiny, items[:1]))


def test_resume_skips_seen_windows(tiny, tmp_path):
    items = list(windows(6))
    path = str(tmp_path / "s.safetensors")
    part = collect_tiny(tiny, items[:4], save_every=2, save_path=path)
    assert CalibrationStats.load(path).seen == part.seen
    resumed = collect_tiny(tiny, items, stats=CalibrationStats.load(path))
    full = collect_tiny(tiny, items)
    assert resumed.seen == full.seen
    for n, s in full.linears.items():
        # The sums are float64, but the resumed run batched the windows otherwise (3+1, then 2 against 3+3), so the
        # float32 forward passes differ in rounding: up to ~1e-5 of the largest entry after two layers of these large
        # random weights. A window counted twice or lost would move the sums by ~1/6 of their size.
        scale = float(s.gram["real"].abs().max())
        torch.testing.assert_close(resumed[n].gram["real"], s.gram["real"], rtol=0, atol=1e-4 * scale)
    half = collect_tiny(tiny, items[:4])  # a window counted twice would double its share; a lost one would drop it
    assert resumed[n].count["real"] == full[n].count["real"] != half[n].count["real"]


def test_theta_rank_rule():
    # 100 components, variance geometric: the rule gives multiples of 16 above θ, or dense by eq. 8.
    evals = torch.tensor([0.9**i for i in range(100)], dtype=torch.float64)
    frac = (evals.cumsum(0) / evals.sum()).tolist()
    for theta in (0.5, 0.9, 0.99):
        k = theta_rank(evals, theta, 512, 512)
        assert k % 16 == 0 and frac[k - 1] > theta
        k_min = next(i + 1 for i, f in enumerate(frac) if f > theta)
        assert k - 16 < k_min <= k
    # Flat spectrum of 64 in a 64x64 linear: rank 48+ never pays off (eq. 8) -> dense.
    flat = torch.ones(64, dtype=torch.float64)
    assert theta_rank(flat, 0.5, 64, 64) is None  # needs 33 -> 48: 48*128 >= 4096
    assert theta_rank(flat, 0.2, 64, 64) == 16
    assert worth_it(16, 64, 64) and not worth_it(32, 64, 64)
    assert theta_rank(torch.zeros(32, dtype=torch.float64), 0.9, 512, 32) == 16  # a dead linear
    assert preset_thetas("b") == preset_thetas("balanced") == (0.99, 0.999)
    with pytest.raises(ValueError):
        preset_thetas("turbo")


def test_theta_one_reproduces_dense(tiny):
    model, fe = tiny
    items = list(windows(6))
    stats = collect_tiny(tiny, items)
    enc = model.get_encoder()
    pcas = spectra(stats, padding_weight=0.5)
    full = {n: d_out for n, (_, d_out) in linear_dims(enc).items()}  # all components: exact
    feats = fe([a for _, a in items[:2]], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ref = enc(feats).last_hidden_state
        import copy

        lite = copy.deepcopy(model)
        apply_factors_(lite.get_encoder(), factorize(enc, pcas, full))
        out = lite.get_encoder()(feats).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # θ close to 1 keeps (nearly) everything: each linear either stays dense or keeps at least θ of its variance
    theta = 0.999999
    dims = linear_dims(enc)
    ranks = theta_ranks({n: p[1] for n, p in pcas.items()}, dims, theta, theta)
    for n, k in ranks.items():
        if k is not None:
            evals = pcas[n][1].clamp(min=0)
            assert k % 16 == 0 and float(evals[:k].sum() / evals.sum()) >= theta, (n, k)


def test_factor_error_is_discarded_variance(tiny):
    """With all frames weighted alike, the mean squared error of the low-rank linear over the calibration
    frames equals the sum of the discarded eigenvalues (what PCA promises)."""
    model, fe = tiny
    enc = model.get_encoder()
    lin = enc.layers[1].fc1
    X = torch.randn(500, lin.in_features, dtype=torch.float64)
    Y = X @ lin.weight.double().T + lin.bias.double()
    s = LinearStats(lin.out_features)
    s.update(Y)
    mean, evals, evecs = s.pca(None)
    for k in (16, 48, 96):
        w1, w2, b = pca_factors(lin, mean, evecs, k)
        err = ((X @ w1 @ w2 + b - Y) ** 2).sum(1).mean()
        torch.testing.assert_close(err, evals[k:].sum(), rtol=1e-6, atol=1e-8)


def test_target_size_never_exceeds_budget(tiny):
    model, _ = tiny
    enc = model.get_encoder()
    dims = linear_dims(enc)
    torch.manual_seed(1)
    specs = {n: torch.rand(d_out, dtype=torch.float64).sort(descending=True).values ** 4 for n, (_, d_out) in dims.items()}
    gains = dict.fromkeys(specs, 1.0)
    prev = None
    for target in (0.95, 0.85, 0.75, 0.65):
        ranks = allocate(specs, dims, gains, linear_budget(enc, target))
        size, dense = encoder_size(enc, ranks)
        assert size <= target * dense
        assert all(k is None or (k % 16 == 0 and worth_it(k, *dims[n])) for n, k in ranks.items())
        # a smaller budget never gives a larger encoder, and the greedy fill comes within one rank step of it
        assert prev is None or size <= prev
        step = max(16 * (d_in + d_out) for d_in, d_out in dims.values())
        assert size > target * dense - step, (target, size / dense)
        prev = size
    with pytest.raises(ValueError):
        allocate(specs, dims, gains, linear_budget(enc, 0.2))
    with pytest.raises(ValueError):
        linear_budget(enc, 1.5)
    cfg = to_low_rank_config({"layers.1.fc1": 32, "layers.0.q_proj": None}, 2)
    assert cfg == [{}, {"fc1": 32}]


def test_lite_model_matches_factors(tiny):
    """The lite model classes carry the factors exactly."""
    from liteasr_hf.calibration.factors import build_lite_model

    model, fe = tiny
    items = list(windows(6))
    stats = collect_tiny(tiny, items)
    enc = model.get_encoder()
    pcas = spectra(stats)
    ranks = theta_ranks({n: p[1] for n, p in pcas.items()}, linear_dims(enc), 0.9, 0.9)
    factors = factorize(enc, pcas, ranks)
    lite = build_lite_model(model, ranks, factors).eval()
    import copy

    ref_model = copy.deepcopy(model)
    apply_factors_(ref_model.get_encoder(), factors)
    feats = fe([a for _, a in items[:2]], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        torch.testing.assert_close(lite.get_encoder()(feats).last_hidden_state,
                                   ref_model.get_encoder()(feats).last_hidden_state, rtol=1e-4, atol=1e-4)


def test_densify_computes_what_the_lite_model_computes():
    """A stage's dense copy (`--stages`) has the dense shapes and the lite encoder's function, k_proj's bias
    dropped (it cancels in the softmax), a changed layer norm carried over, the decoder untouched.
    Tolerance 1e-4: float32 products taken in another order than the lite model's two thin matmuls."""
    from liteasr_hf import LiteWhisperForConditionalGeneration
    from liteasr_hf.calibration.factors import densify
    from modeling_utils import random_factors, tiny_whisper

    model = tiny_whisper()
    low_rank_config = [{"q_proj": 8, "k_proj": 8, "v_proj": 16, "fc1": 16}, {"k_proj": 8, "out_proj": 8, "fc2": 8}]
    factors = random_factors(model, low_rank_config)
    lite = LiteWhisperForConditionalGeneration.from_whisper(model, low_rank_config, factors).eval()
    with torch.no_grad():
        lite.get_encoder().layers[1].final_layer_norm.weight.mul_(1.5)  # densify carries every encoder weight over
    dense = densify(model, lite)
    assert [(n, p.shape) for n, p in dense.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]
    feats = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, ref = dense.get_encoder()(feats).last_hidden_state, lite.get_encoder()(feats).last_hidden_state
    assert factors["layers.0.self_attn.k_proj"][2].abs().max() > 0.1  # a k bias that matters if it did not cancel
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, model.get_encoder()(feats).last_hidden_state, atol=1e-2)
    for a, b in zip(dense.get_decoder().parameters(), model.get_decoder().parameters()):
        assert torch.equal(a, b)
