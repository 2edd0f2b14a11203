"""Sequential calibration and sensitivity allocation on a tiny random Whisper (CPU, seconds)."""

import copy

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from liteasr_hf.calibration.compress import apply_factors_, encoder_size, linear_budget, linear_dims
from liteasr_hf.calibration.ranks import linear_params
from liteasr_hf.calibration.sensitivity import allocate, sensitivity_ranks
from liteasr_hf.calibration.sequential import calibrate, fixed_ranks, frame_weights, theta_rule


def tiny_whisper(seed=0):
    torch.manual_seed(seed)
    cfg = WhisperConfig(vocab_size=100, num_mel_bins=16, d_model=64, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=128,
                        max_source_positions=60, max_target_positions=20, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1, init_std=0.25)
    return WhisperForConditionalGeneration(cfg).eval()


def data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 16, 120, generator=g)
    real = torch.randint(10, 40, (n,), generator=g)
    feats[:, :, 1:][torch.arange(120 - 1)[None, None, :].expand(n, 16, -1) >= 2 * real[:, None, None]] = -1.0  # "padding"
    return feats, real


def test_frame_weights_sum_to_one_and_split():
    w = frame_weights(torch.tensor([10, 60]), 60, 0.5)
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    torch.testing.assert_close(w[0, :10].sum(), torch.tensor(0.5))
    torch.testing.assert_close(frame_weights(torch.tensor([10]), 60, None)[0], torch.full((60,), 1 / 60))


def test_sequential_full_rank_reproduces_dense():
    model, (feats, real) = tiny_whisper(), data()
    # θ -> 1 keeps every component; eq. 8 would keep such linears dense, so force full ranks.
    ranks = {n: d_out for n, (_, d_out) in linear_dims(model.get_encoder()).items()}
    for sequential, target in ((False, "self"), (True, "self"), (True, "dense+residual")):
        factors, got, _ = calibrate(model, feats, real, fixed_ranks(ranks), sequential=sequential, target=target, progress=False)
        assert got == ranks and len(factors) == len(ranks)
        lite = apply_factors_(copy.deepcopy(model.get_encoder()), factors)
        with torch.no_grad():
            ref = model.get_encoder()(feats).last_hidden_state
            torch.testing.assert_close(lite(feats).last_hidden_state, ref, rtol=1e-4, atol=1e-4)


def test_error_compensation_beats_the_paper_at_equal_ranks():
    model, (feats, real) = tiny_whisper(), data(n=12)
    enc = model.get_encoder()
    _, ranks, _ = calibrate(model, feats, real, theta_rule(0.9, 0.9), sequential=False, progress=False)
    assert all(k is None or k % 16 == 0 for k in ranks.values()) and any(ranks.values())
    errs = {}
    for sequential, target in ((False, "self"), (True, "dense"), (True, "dense+residual")):
        factors, _, _ = calibrate(model, feats, real, fixed_ranks(ranks), sequential=sequential, target=target, progress=False)
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
    model, (feats, real) = tiny_whisper(), data()
    _, _, pcas = calibrate(model, feats, real, lambda *a: None, sequential=False, keep_pcas=True, progress=False)
    enc = model.get_encoder()
    for target in (0.8, 0.9):
        ranks, gains = sensitivity_ranks(model, feats, real, target, pcas, probe_clips=3, progress=False)
        assert all(g > 0 for g in gains.values())
        dims = linear_dims(enc)
        saved = sum(linear_params(None, *dims[n]) - linear_params(k, *dims[n]) for n, k in ranks.items())
        assert sum(p.numel() for p in enc.parameters()) - saved <= target * sum(p.numel() for p in enc.parameters())
