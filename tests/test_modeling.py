"""Lite-Whisper models in-process: config validation, from_whisper, rank-space attention, liteasr masks, generate."""

import copy
import json
import os

import pytest
import torch

import liteasr_hf
from liteasr_hf import LiteWhisperConfig, LiteWhisperForConditionalGeneration, LowRankLinear
from liteasr_hf.lite_whisper import attention_lite_whisper, configuration_lite_whisper, modeling_lite_whisper
from liteasr_hf.lite_whisper.triton_attention_lite_whisper import HAS_TRITON, INTERPRETED
from modeling_utils import exact_factors, full_ranks, module_name, random_factors, tiny_config, tiny_whisper

MIXED_RANKS = [  # head_dim is 16: ranks below it take the rank-space route, the 20s and dense sides do not
    [{"q_proj": 4, "k_proj": 6, "v_proj": 5, "fc1": 10}, {"k_proj": 3, "v_proj": 20, "out_proj": 8}],
    [{"q_proj": 3, "k_proj": 9, "fc2": 7}, {"q_proj": 5, "v_proj": 2}],
    [{"q_proj": 7, "k_proj": 20}, {"q_proj": 20, "k_proj": 20, "v_proj": 20}],
    # dense-space q/k beside a rank-space v; unequal dense-space ranks
    [{"q_proj": 20, "k_proj": 20, "v_proj": 5, "fc1": 9}, {"q_proj": 18, "k_proj": 24, "v_proj": 20}],
]


def tiny_kwargs():
    return {k: v for k, v in tiny_config().to_dict().items() if k != "model_type"}


def mel(batch=2, dtype=torch.float32, seed=0):
    return torch.randn(batch, 80, 100, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize(
    "low_rank_config, message",
    [
        ([{}], "2 layers"),
        ([{}, {"gate_proj": 4}], "low_rank_config[1]['gate_proj']: unknown projection"),
        ([{"q_proj": 0}, {}], "low_rank_config[0]['q_proj']: rank must be an int in [1, 64]"),
        ([{}, {"fc1": 65}], "low_rank_config[1]['fc1']: rank must be an int in [1, 64]"),
        ([{}, {"fc2": 4.0}], "low_rank_config[1]['fc2']"),
        ([{"k_proj": True}, {}], "low_rank_config[0]['k_proj']"),
    ],
)
def test_config_validation_names_layer_and_key(low_rank_config, message):
    with pytest.raises(ValueError) as err:
        LiteWhisperConfig(**tiny_kwargs(), low_rank_config=low_rank_config)
    assert message in str(err.value)


def test_config_defaults_dense_and_round_trips():
    config = LiteWhisperConfig(encoder_layers=3)
    assert config.model_type == "lite-whisper" and config.low_rank_config == [{}, {}, {}]
    assert config.attention_kernel == "auto"
    config = LiteWhisperConfig(low_rank_config=[{"fc1": 8}] * 4, attention_kernel="reference")
    loaded = LiteWhisperConfig.from_dict(config.to_dict())
    assert loaded.low_rank_config == [{"fc1": 8}] * 4 and loaded.attention_kernel == "reference"
    # the published layout has no attention_kernel: it loads as "auto"
    published = {k: v for k, v in config.to_dict().items() if k != "attention_kernel"}
    assert LiteWhisperConfig.from_dict(published).attention_kernel == "auto"


@pytest.mark.parametrize("value", ["fast", "Auto", "sdpa", None, 0])
def test_config_rejects_bad_attention_kernel(value):
    with pytest.raises(ValueError, match="attention_kernel must be one of 'auto', 'triton', 'reference'"):
        LiteWhisperConfig(**tiny_kwargs(), attention_kernel=value)
    config = LiteWhisperConfig(**tiny_kwargs())
    with pytest.raises(ValueError, match="attention_kernel"):  # also when set later (as from_pretrained's kwargs are)
        config.attention_kernel = value
    assert config.attention_kernel == "auto"
    assert configuration_lite_whisper.ATTENTION_KERNELS == ("auto", "triton", "reference")


def test_from_pretrained_takes_attention_kernel(tmp_path):
    """attention_kernel is a run-time choice: from_pretrained(path, attention_kernel=...) sets it (config kwargs flow
    through), a bad value is an error naming the field, and a config.json without it (published) loads as "auto"."""
    dense = tiny_whisper()
    ranks = [{"q_proj": 4}, {}]
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, random_factors(dense, ranks))
    folder = str(tmp_path / "lite")
    lite.save_pretrained(folder)
    assert LiteWhisperForConditionalGeneration.from_pretrained(folder).config.attention_kernel == "auto"
    loaded = LiteWhisperForConditionalGeneration.from_pretrained(folder, attention_kernel="reference")
    assert loaded.config.attention_kernel == "reference"
    with pytest.raises(ValueError, match="attention_kernel must be one of"):
        LiteWhisperForConditionalGeneration.from_pretrained(folder, attention_kernel="cuda")
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config.pop("attention_kernel", None)
    json.dump(config, open(path, "w"))
    assert LiteWhisperForConditionalGeneration.from_pretrained(folder).config.attention_kernel == "auto"


def test_full_rank_exact_factors_reproduce_dense():
    dense = tiny_whisper()
    ranks = full_ranks(dense.config)
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, exact_factors(dense, ranks))
    assert all(isinstance(lite.model.encoder.get_submodule(module_name(i, n)), LowRankLinear)
               for i, layer in enumerate(ranks) for n in layer)
    x = mel()
    with torch.no_grad():
        torch.testing.assert_close(lite.model.encoder(x).last_hidden_state, dense.model.encoder(x).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)
    assert torch.equal(lite.generate(x, max_new_tokens=8), dense.generate(x, max_new_tokens=8))
    # Whisper's prompt, language and task handling is keyed on model_type == "whisper" in transformers.
    prompt = torch.tensor([dense.generation_config.prev_sot_token_id, 72, 105])
    kwargs = dict(max_new_tokens=6, prompt_ids=prompt, language="fr", task="transcribe")
    assert torch.equal(lite.generate(x[:1], **kwargs), dense.generate(x[:1], **kwargs))


def test_from_whisper_copies_and_checks_factors():
    dense = tiny_whisper()
    ranks = [{"q_proj": 4}, {"fc2": 8}]
    factors = random_factors(dense, ranks)
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, factors)
    assert lite.config.low_rank_config == ranks and lite.config.model_type == "lite-whisper"
    assert lite.generation_config.lang_to_id == dense.generation_config.lang_to_id
    assert lite.generation_config is not dense.generation_config
    # Shares nothing mutable with the dense model or the factors.
    dense_ptrs = {t.data_ptr() for t in dense.state_dict().values()}
    dense_ptrs |= {t.data_ptr() for f in factors.values() for t in f}
    assert not dense_ptrs & {t.data_ptr() for t in lite.state_dict().values()}
    assert torch.equal(lite.model.encoder.layers[1].fc2.weight1, factors["layers.1.fc2"][0])
    assert torch.equal(lite.model.encoder.layers[1].self_attn.q_proj.weight, dense.model.encoder.layers[1].self_attn.q_proj.weight)
    assert lite.proj_out.weight is lite.model.decoder.embed_tokens.weight  # tied as in Whisper

    with pytest.raises(ValueError, match="layers.1.fc2"):
        LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, {"layers.0.self_attn.q_proj": factors["layers.0.self_attn.q_proj"]})
    bad = dict(factors, **{"layers.1.fc2": (factors["layers.1.fc2"][0][:, :4],) + factors["layers.1.fc2"][1:]})
    with pytest.raises(ValueError, match=r"factors\['layers.1.fc2'\] weight1 has shape \(128, 4\), expected \(128, 8\)"):
        LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, bad)


@pytest.mark.parametrize("low_rank_config", MIXED_RANKS)
def test_rank_space_attention_matches_dense_attention(low_rank_config, monkeypatch):
    """float64; the rank-space route reassociates the same products, so agreement is to ~1e-15 (tolerance 1e-12)."""
    dense = tiny_whisper(dtype=torch.float64)
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, low_rank_config, random_factors(dense, low_rank_config))
    calls, fused = [], []
    core = modeling_lite_whisper.attention_core
    monkeypatch.setattr(modeling_lite_whisper, "attention_core", lambda *a, **kw: calls.append(a) or core(*a, **kw))
    operands = modeling_lite_whisper.LiteWhisperAttention.attention_operands
    monkeypatch.setattr(modeling_lite_whisper.LiteWhisperAttention, "attention_operands",
                        lambda self, x: fused.append(x) or operands(self, x))
    hidden = torch.randn(2, 50, 64, dtype=torch.float64)
    for layer, ranks in zip(lite.model.encoder.layers, low_rank_config):
        attn = layer.self_attn
        lite.set_attn_implementation("eager")
        with torch.no_grad():
            reference = attn(hidden)[0]
        lite.set_attn_implementation("liteasr")
        calls.clear(), fused.clear()
        with torch.no_grad():
            out = attn(hidden)[0]
        torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
        # every layer with a low-rank q/k/v takes the fused route (rank space or not), the others the stock one
        assert len(fused) == any(n in ranks for n in ("q_proj", "k_proj", "v_proj"))
        qk = min([r for n, r in ranks.items() if n in ("q_proj", "k_proj")], default=16) < 16
        v = ranks.get("v_proj", 16) < 16
        assert len(calls) == (qk or v)  # the rank-space route ran exactly when it pays
        if calls:
            q, k, v_op, key_bias = calls[0]
            assert q.shape[:2] == (2, 4) and (k.shape[1] == 1) == (qk and ranks.get("k_proj", 16) <= ranks.get("q_proj", 16))
            assert v_op.shape[1] == (1 if v else 4) and (key_bias is not None) == (qk and "q_proj" in ranks)
    # The whole encoder agrees too, and attention weights fall back to the eager path.
    x = mel(dtype=torch.float64)
    with torch.no_grad():
        fast = lite.model.encoder(x).last_hidden_state
        weights = lite.model.encoder(x, output_attentions=True)
        lite.set_attn_implementation("eager")
        slow = lite.model.encoder(x, output_attentions=True)
    torch.testing.assert_close(fast, slow.last_hidden_state, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weights.attentions, slow.attentions, rtol=1e-12, atol=1e-12)


def test_liteasr_encoder_under_inference_mode():
    """The weight-only products are cached across calls, keyed on the parameters' versions. A model cast inside
    torch.inference_mode (as the benchmark does) has inference-tensor parameters, which keep no version counter:
    the cache must still work there. The second call reuses the cache and must equal the first, and both the
    no_grad float64 result (1e-12: the same float64 products)."""
    import copy

    dense = tiny_whisper()
    ranks = MIXED_RANKS[0]
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, random_factors(dense, ranks))
    lite.set_attn_implementation("liteasr")
    x = mel(dtype=torch.float64)
    with torch.no_grad():
        expected = copy.deepcopy(lite).double().model.encoder(x).last_hidden_state
    with torch.inference_mode():
        encoder = lite.model.encoder.to(torch.float64)
        assert next(encoder.parameters()).is_inference()
        first = encoder(x).last_hidden_state
        second = encoder(x).last_hidden_state
    torch.testing.assert_close(first, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_encoder_residual_stream_is_contiguous():
    """Whisper's stem leaves the residual stream channels-first (a permuted view); the lite layers make it contiguous
    (for fast elementwise kernels) without changing a value: full-rank factors still give the dense encoder's output."""
    dense = tiny_whisper()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, [{}, {}], {})
    strides = []
    for layer in lite.model.encoder.layers:
        layer.register_forward_hook(lambda m, a, out: strides.append(out.is_contiguous()))
    x = mel()
    with torch.no_grad():
        expected = dense.model.encoder(x).last_hidden_state
        out = lite.model.encoder(x).last_hidden_state
    assert strides == [True, True]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_liteasr_honours_decoder_padding_mask():
    dense = tiny_whisper()
    ranks = [{"q_proj": 4, "k_proj": 4, "v_proj": 4}, {"fc1": 8}]
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, random_factors(dense, ranks))
    ids = torch.tensor([[257, 258, 261, 265, 72, 105, 33], [256, 256, 256, 257, 258, 261, 265]])
    mask = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])  # left padding: the mask matters at every position
    x = mel()
    logits = {}
    for impl in ("sdpa", "liteasr", "eager"):
        lite.set_attn_implementation(impl)
        with torch.no_grad():
            logits[impl] = lite(x, decoder_input_ids=ids, decoder_attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(logits["liteasr"][keep], logits["sdpa"][keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits["liteasr"][keep], logits["eager"][keep], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        unmasked = lite(x, decoder_input_ids=ids).logits
    assert not torch.allclose(unmasked[1, 3:], logits["liteasr"][1, 3:], atol=1e-3)  # the mask is not a no-op here


def test_liteasr_attention_weights_equal_eager():
    """output_attentions under liteasr falls back to eager attention with SDPA's mask made additive (causal when the
    decoder gets no mask, causal + padding when it does): every attention map and the logits equal eager's, in float64
    (tolerance 1e-12: the same products in the same order)."""
    dense = tiny_whisper(dtype=torch.float64)
    ranks = [{"q_proj": 4, "k_proj": 4, "v_proj": 4}, {"fc1": 8}]
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, random_factors(dense, ranks))
    ids = torch.tensor([[257, 258, 261, 265, 72, 105, 33], [256, 256, 256, 257, 258, 261, 265]])
    x = mel(dtype=torch.float64)
    for mask in (None, torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])):
        out = {}
        for impl in ("eager", "liteasr"):
            lite.set_attn_implementation(impl)
            with torch.no_grad():
                out[impl] = lite(x, decoder_input_ids=ids, decoder_attention_mask=mask, output_attentions=True)
        for name in ("encoder_attentions", "decoder_attentions", "cross_attentions", "logits"):
            torch.testing.assert_close(getattr(out["liteasr"], name), getattr(out["eager"], name), rtol=1e-12, atol=1e-12)
        assert out["liteasr"].decoder_attentions[0][0, :, 0, 1:].abs().max() == 0  # causal: position 0 sees only itself


def test_liteasr_generate_matches_sdpa():
    dense = tiny_whisper()
    ranks = [{"q_proj": 4, "k_proj": 6, "v_proj": 5}, {"k_proj": 3, "v_proj": 8}]
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, random_factors(dense, ranks))
    x = mel()
    expected = lite.generate(x, max_new_tokens=8)
    lite.set_attn_implementation("liteasr")
    assert torch.equal(lite.generate(x, max_new_tokens=8), expected)


def test_auto_classes_registered():
    from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq

    config = AutoConfig.for_model("lite-whisper", **tiny_kwargs())
    assert type(config) is LiteWhisperConfig
    for auto in (AutoModel, AutoModelForSpeechSeq2Seq):
        assert type(auto.from_config(config)) is LiteWhisperForConditionalGeneration
    assert {"LiteWhisperConfig", "LiteWhisperForConditionalGeneration", "save_lite_checkpoint"} <= set(liteasr_hf.__all__)


# ---------------------------------------------------------------------------------------------------------------
# The attention core's implementation choice (config.attention_kernel) through the model

needs_interpreter = pytest.mark.skipif(
    not (HAS_TRITON and INTERPRETED),
    reason="needs triton and TRITON_INTERPRET=1 set before triton is imported (`make test`)",
)
# head_dim 32 (2 heads of d_model 64), ranks 16: rank-space operands of feature size 16, ones the kernel takes.
# Layer 0: q/k and v in rank space (r 16, v 16, key bias); layer 1: q/k in rank space beside a dense v (32 per head).
KERNEL_RANKS = [{"q_proj": 16, "k_proj": 16, "v_proj": 16}, {"q_proj": 16, "k_proj": 16}]


def kernel_shaped_lite():
    dense = tiny_whisper(encoder_attention_heads=2)
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, KERNEL_RANKS, random_factors(dense, KERNEL_RANKS))
    lite.set_attn_implementation("liteasr")
    return lite


def encode(lite, kernel, x):
    lite.config.attention_kernel = kernel
    with torch.no_grad():
        return lite.model.encoder(x).last_hidden_state


def test_auto_attention_kernel_is_the_reference_on_cpu(kernel_calls):
    """The default "auto" runs the PyTorch reference on the CPU even with TRITON_INTERPRET=1 (the suite sets it): no
    op call, no kernel launch, and the encoder output equals attention_kernel="reference"'s bit for bit."""
    lite = kernel_shaped_lite()
    assert lite.config.attention_kernel == "auto"
    x = mel()
    auto = encode(lite, "auto", x)
    assert kernel_calls == []
    torch.testing.assert_close(auto, encode(lite, "reference", x), rtol=0, atol=0)
    assert kernel_calls == []


@needs_interpreter
def test_triton_attention_kernel_runs_the_kernel_on_cpu_under_interpreter(kernel_calls):
    """attention_kernel="triton" on the CPU under the interpreter launches the kernel in both layers. Tolerance
    (FlashAttention's rule on the whole encoder, as in test_kernel.py's GPU encoder test): against the float64
    evaluation of the same weights, the kernel route's relative error is at most twice the fp32 reference route's,
    with a floor of 2 ulps of fp32 (both routes compute the same rank-space products; only the core differs). Measured:
    3.4e-7 for both."""
    lite = kernel_shaped_lite()
    x = mel()
    out = encode(lite, "triton", x)
    assert kernel_calls == ["op", "kernel"] * 2
    truth = encode(copy.deepcopy(lite).double(), "reference", x.double())
    rel = lambda got: ((got.double() - truth).norm() / truth.norm()).item()  # noqa: E731
    err_kernel, err_reference = rel(out), rel(encode(lite, "reference", x))
    assert err_kernel <= max(2 * err_reference, 2 * torch.finfo(torch.float32).eps), (err_kernel, err_reference)


def test_triton_attention_kernel_where_it_cannot_run_raises(monkeypatch, kernel_calls):
    """Simulated machine without the interpreter (or without triton): "triton" is an error saying why, "auto" runs."""
    lite = kernel_shaped_lite()
    x = mel()
    monkeypatch.setattr(attention_lite_whisper, "INTERPRETED", False)
    with pytest.raises(ValueError, match="attention_kernel='triton' on CPU needs TRITON_INTERPRET=1 set before triton"):
        encode(lite, "triton", x)
    monkeypatch.setattr(attention_lite_whisper, "HAS_TRITON", False)
    with pytest.raises(ValueError, match="attention_kernel='triton' needs triton, which is not installed"):
        encode(lite, "triton", x)
    encode(lite, "auto", x)
    assert kernel_calls == []


@needs_interpreter
def test_environment_override_replaces_auto_only(monkeypatch, kernel_calls):
    """LITEASR_ATTENTION, when set, decides for "auto" only: =reference keeps "auto" on the reference and leaves an
    explicit "triton" on the kernel; =triton turns "auto" into the kernel, and an explicit "reference" still wins."""
    lite = kernel_shaped_lite()
    x = mel()
    expected = encode(lite, "reference", x)
    monkeypatch.setenv("LITEASR_ATTENTION", "reference")
    torch.testing.assert_close(encode(lite, "auto", x), expected, rtol=0, atol=0)
    assert kernel_calls == []
    encode(lite, "triton", x)
    assert kernel_calls == ["op", "kernel"] * 2
    kernel_calls.clear()
    monkeypatch.setenv("LITEASR_ATTENTION", "triton")
    encode(lite, "auto", x)
    assert kernel_calls == ["op", "kernel"] * 2
    kernel_calls.clear()
    torch.testing.assert_close(encode(lite, "reference", x), expected, rtol=0, atol=0)
    assert kernel_calls == []
