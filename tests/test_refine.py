"""Factor refinement on a tiny random Whisper (CPU, seconds): lowers the held-out loss, deterministic."""

import copy

import pytest
import torch

from liteasr_hf.calibration.factors import apply_factors_, factorize
from liteasr_hf.calibration.ranks import linear_dims, theta_ranks
from liteasr_hf.calibration.refine import refine, teacher_outputs, teacher_tokens, trainable
from liteasr_hf.calibration.stats import CalibrationStats, spectra

from modeling_utils import SMALL_MELS, tiny_features, tiny_whisper


def start_factors(model, feats, real):
    """The PCA factors of θ 0.8, perturbed: on random data the PCA start is already as good as held-out clips allow,
    so refinement gets an error to undo that holds on every clip."""
    enc = model.get_encoder()
    pcas = spectra(CalibrationStats.for_encoder(enc).add(enc, feats, real.tolist()), 0.5)
    ranks = theta_ranks({n: p[1] for n, p in pcas.items()}, linear_dims(enc), 0.8, 0.8)
    g = torch.Generator().manual_seed(0)
    return {n: (w1, w2 + 0.3 * w2.std() * torch.randn(w2.shape, generator=g), b)
            for n, (w1, w2, b) in factorize(enc, pcas, ranks).items()}


def compressed(model, feats, real):
    lite = copy.deepcopy(model)
    apply_factors_(lite.get_encoder(), start_factors(model, feats, real))
    return lite


def test_refine_lowers_held_out_loss_and_is_deterministic():
    model, (feats, real) = tiny_whisper(**SMALL_MELS), tiny_features(n=10)
    targets = teacher_outputs(model, feats)
    runs = []
    for _ in range(2):
        lite = compressed(model, feats, real)
        r = refine(lite, feats, real, targets, steps=40, lr=1e-3, batch_size=2, eval_every=10, patience=2, seed=0, progress=False)
        runs.append((r, [p.detach().clone() for p in trainable(lite)]))
    (r, params), (r2, params2) = runs
    assert r["best"] < 0.95 * r["initial"], r["history"]  # random data: little to generalise from
    assert r["history"] == r2["history"]
    for a, b in zip(params, params2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Only the factors moved: the decoder is untouched.
    for (n, a), b in zip(lite.get_decoder().named_parameters(), model.get_decoder().parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_refine_with_decoder_kl():
    model, (feats, real) = tiny_whisper(**SMALL_MELS), tiny_features(n=6)
    targets = teacher_outputs(model, feats)
    tokens = teacher_tokens(model, feats, max_new_tokens=5)
    runs = {}
    for kl in (0.0, 1.0):
        lite = compressed(model, feats, real)
        runs[kl] = refine(lite, feats, real, targets, token_targets=tokens, kl_weight=kl,
                          steps=12, lr=3e-3, batch_size=2, eval_every=4, patience=3, seed=0, progress=False)
    r = runs[1.0]
    # it learns (strictly better held out, not just "kept the start"), and the KL is in the loss it optimises
    assert r["best"] < 0.99 * r["initial"], r["history"]
    assert r["initial"] > runs[0.0]["initial"] and r["history"] != runs[0.0]["history"]


def test_warmup_scales_the_first_steps():
    """Adam's first step moves every parameter with a gradient by ~lr (m / sqrt(v) = ±1), so after one step
    the largest change is lr without warm-up and lr / warmup with it (1 % tolerance: Adam's eps, 1e-8, is
    far below these gradients)."""
    model, (feats, real) = tiny_whisper(**SMALL_MELS), tiny_features(n=4)
    targets = teacher_outputs(model, feats)
    moved = {}
    for warmup in (0, 10):
        lite = compressed(model, feats, real)
        before = [p.detach().clone() for p in trainable(lite)]
        refine(lite, feats, real, targets, steps=1, lr=1e-3, warmup=warmup, batch_size=2, holdout=0, seed=0, progress=False)
        moved[warmup] = max(float((p.detach() - b).abs().max()) for p, b in zip(trainable(lite), before))
    assert abs(moved[0] - 1e-3) < 1e-5 and abs(moved[10] - 1e-4) < 1e-6, moved


def test_teacher_transcripts_do_not_flood_the_log():
    """Whisper's generate warns "Both max_new_tokens and max_length" at every decoding step when the checkpoint's
    generation config sets max_length (real ones do: 448); the teacher transcripts are made without that noise."""
    import logging

    class Seen(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    model, (feats, _) = tiny_whisper(**SMALL_MELS), tiny_features(n=2)
    model.generation_config.max_length = 448
    log, seen = logging.getLogger("transformers.generation.utils"), Seen()
    log.addHandler(seen)
    try:
        model.generate(feats[:1], max_new_tokens=3)
        assert any(m.startswith("Both `max_new_tokens`") for m in seen.messages)  # the warning this guards against
        seen.messages.clear()
        teacher_tokens(model, feats, max_new_tokens=3)
        assert not any(m.startswith("Both `max_new_tokens`") for m in seen.messages), seen.messages[:2]
    finally:
        log.removeHandler(seen)


def test_refine_at_a_dynamic_context_trains_and_scores_the_student_there():
    """--refine-context: the lite encoder runs on its dynamic context in every step and held-out score, and the loss
    is the decoder KL alone against the full-window teacher. Recomputed by hand at that context, the held-out loss is
    the one refinement kept; at the full window it is not (so a refinement that ignored the context would fail)."""
    from liteasr_hf import LiteWhisperForConditionalGeneration
    from liteasr_hf.calibration.ranks import to_low_rank_config
    from liteasr_hf.calibration.refine import _enc_out, _kl

    model, (feats, real) = tiny_whisper(**SMALL_MELS), tiny_features(n=6)  # 1.2 s window; audio 0.2-0.8 s
    targets = teacher_outputs(model, feats)
    tokens = teacher_tokens(model, feats, max_new_tokens=5)
    factors = start_factors(model, feats, real)
    ranks = {name: w1.shape[1] for name, (w1, _, _) in factors.items()}
    lite = LiteWhisperForConditionalGeneration.from_whisper(model, to_low_rank_config(ranks, 2), factors)
    encoder = lite.get_encoder()
    context = encoder.context_settings().replace(buckets=[1.0], margin=0.1)
    seen = []
    hook = encoder.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    r = refine(lite, feats, real, targets, token_targets=tokens, kl_weight=1.0, mse_weight=0.0, context=context,
               steps=8, lr=3e-3, batch_size=2, eval_every=4, seed=0, progress=False)
    hook.remove()
    assert set(seen) == {50}  # 1.0 s: 100 mel frames, 50 positions of the 60
    held = torch.tensor(r["held_out"])

    def held_kl(ctx):
        with torch.no_grad():
            return float(_kl(lite, _enc_out(encoder, feats[held], ctx), [tokens[int(i)] for i in held]))

    # Recomputing the held-out score at the same context reproduces it to float32 noise (~1e-7); at the full window it
    # differs by far more (6e-5 here, where the context cuts 10 of 60 frames), so "best" was scored at the context.
    assert abs(held_kl(context) - r["best"]) < 2e-6, (held_kl(context), r["best"])
    assert abs(held_kl(context.replace(buckets=None)) - r["best"]) > 2e-5
    assert encoder.context_settings().buckets is None  # refinement left the config's settings as they were

    # With a padding stride in the context, training runs the strided encoder: fewer positions than the bucket's 50
    seen.clear()
    hook = encoder.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    # (the KL alone needs no encoder-output targets)
    refine(lite, feats, real, None, token_targets=tokens, kl_weight=1.0, mse_weight=0.0, context=context.replace(padding_stride=4),
           steps=1, lr=3e-3, batch_size=2, eval_every=1, seed=0, progress=False)
    hook.remove()
    assert seen and max(seen) < 50, seen
    with pytest.raises(ValueError, match="mse_weight > 0 needs targets"):
        refine(lite, feats, real, None, token_targets=tokens, kl_weight=1.0, steps=1, progress=False)
