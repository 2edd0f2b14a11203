"""The CPU fast path (liteasr_hf.optimize_for_cpu) and bf16 generation on the CPU."""

import pytest
import torch
from torch import nn

from liteasr_hf import LiteWhisperForConditionalGeneration, optimize_for_cpu
from liteasr_hf.cpu import Int8Linear, Int8Logits, cpu_bf16_support, dynamic_int8_pack, int8_decoder_, lean_decoder_
from modeling_utils import random_factors, tiny_whisper

RANKS = [{"q_proj": 4, "k_proj": 6, "v_proj": 5, "fc1": 10}, {"k_proj": 3, "out_proj": 8}]


def test_optimize_for_cpu_casts_at_the_encoder_boundary_and_quantizes_the_decoder():
    import copy

    dense = tiny_whisper()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, RANKS, random_factors(dense, RANKS))
    x = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[257, 258, 261, 265]] * 2)
    rel = lambda got, want: float((got.float() - want).abs().amax() / want.abs().amax())  # noqa: E731
    with torch.no_grad():
        want_enc, want = lite.get_encoder()(x).last_hidden_state, lite(x, decoder_input_ids=ids).logits
        bf16 = optimize_for_cpu(copy.deepcopy(lite), dtype=torch.bfloat16, decoder="fp32")
        got_enc, got = bf16.get_encoder()(x).last_hidden_state, bf16(x, decoder_input_ids=ids).logits
        int8 = optimize_for_cpu(copy.deepcopy(lite), dtype=torch.float32, decoder="int8")
        got8 = int8(x, decoder_input_ids=ids).logits
        bf16_all = optimize_for_cpu(copy.deepcopy(lite), dtype=torch.bfloat16)
        assert bf16_all(x, decoder_input_ids=ids).logits.dtype == torch.bfloat16  # float32 features cast on the way in
    assert next(bf16.get_encoder().parameters()).dtype == torch.bfloat16
    assert got_enc.dtype == torch.float32  # cast back for the float32 decoder
    # bf16 keeps 8 mantissa bits (2^-8 = 0.4 % a rounding); two encoder layers compound it (measured 1.2 %): 3 %.
    assert rel(got_enc, want_enc) < 0.03 and rel(got, want) < 0.03
    linears = {n for n, m in int8.model.decoder.named_modules() if type(m) is nn.Linear}
    assert linears == {f"layers.{i}.encoder_attn.{p}" for i in range(2) for p in ("k_proj", "v_proj")}  # once a clip
    assert type(int8.proj_out) is Int8Logits and int8.proj_out.full_weight is int8.model.decoder.embed_tokens.weight
    # Weight-only int8 (one scale per output row) and bf16 activations: measured 1.6 % RMS on these
    # logits (two decoder layers compound it); 4 % allowed.
    assert float(((got8 - want) ** 2).mean().sqrt() / (want**2).mean().sqrt()) < 0.04
    assert int8.generate(x, max_new_tokens=4).shape[0] == 2


def test_int8_linear_is_a_linear_within_int8_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        got, want = Int8Linear(linear)(x), linear(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    # Each weight moves by at most max|w_row| / 254 and each activation by bf16's 2^-9: measured 0.5 % RMS; 2 % allowed.
    assert float((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()) < 0.02
    assert Int8Linear(nn.Linear(64, 96, bias=False))(x).shape == (3, 5, 96)


@pytest.mark.parametrize("dynamic", [True, False])
def test_int8_logits_are_exact_where_greedy_decoding_chooses(dynamic):
    torch.manual_seed(0)
    linear = nn.Linear(64, 300, bias=False)
    x = torch.randn(2, 3, 64)
    logits = Int8Logits(linear, exact_top_k=8, dynamic=dynamic)
    assert (logits.packed is not None) == dynamic  # this torch (2.13, x86) has fbgemm's dynamic int8 product
    with torch.no_grad():
        got, want = logits(x), linear(x)
        approx = logits.approximate(x)
    # The approximate logits: int8 weights, and with `dynamic` 7-bit activations too (measured 0.5 % / 1.6 % RMS
    # relative; 3 % allowed).
    assert float((approx - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()) < 0.03
    top = got.topk(8, dim=-1).indices
    # The top 8 are recomputed from the float32 weight: equal up to summation order (measured 5e-7 on logits of
    # size ~2; 1e-5 allowed), while int8 elsewhere is off by ~1e-2.
    assert torch.allclose(got.gather(-1, top), want.gather(-1, top), rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    rest = torch.ones_like(got, dtype=torch.bool).scatter_(-1, top, False)
    assert (got - want)[rest].abs().max() > 1e-4  # elsewhere the int8 values remain: the refinement is what is exact


def test_dynamic_int8_pack_falls_back_where_torch_has_no_quantized_tensors(monkeypatch):
    monkeypatch.delattr(torch, "_make_per_channel_quantized_tensor")
    logits = Int8Logits(nn.Linear(64, 300, bias=False))
    assert dynamic_int8_pack(torch.zeros(4, 8, dtype=torch.int8), torch.ones(4)) is None and logits.packed is None
    assert logits(torch.randn(2, 64)).shape == (2, 300)  # the weight-only kernel instead


@pytest.mark.parametrize("int8", [False, True])
def test_lean_decoder_layers_compute_what_transformers_layers_do(monkeypatch, int8):
    """The lean decoder layer against transformers' own on the same weights: prefill (4 tokens, causal by flag),
    steps on the cache, a padded decoder mask, greedy and beam-search generate, and the fallback that gives
    attention weights."""
    import copy

    from transformers.models.whisper.modeling_whisper import WhisperDecoderLayer

    stock = tiny_whisper()
    if int8:
        int8_decoder_(stock)
    lean = lean_decoder_(copy.deepcopy(stock))
    layer = lean.model.decoder.layers[0]
    for name in ("weight", "bias") + (("scale",) if int8 else ()):  # views of the fused tensors: nothing copied
        fused = getattr(layer.qkv_proj, name)
        assert getattr(layer.self_attn.q_proj, name).data_ptr() == fused.data_ptr()
        assert getattr(layer.self_attn.v_proj, name).data_ptr() == fused[2 * fused.shape[0] // 3 :].data_ptr()
    stock_calls = []
    original = WhisperDecoderLayer.forward

    def counted(*args, **kwargs):  # transformers' layer run with a cache (language detection runs one without)
        if (args[5] if len(args) > 5 else kwargs.get("cache", kwargs.get("past_key_values"))) is not None:
            stock_calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(WhisperDecoderLayer, "forward", counted)

    x = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[257, 258, 261, 265, 70, 80, 90]] * 2)
    mask = torch.ones_like(ids[:, :4])
    mask[1, 0] = 0  # a padded first token: the decoder builds a 4D mask, which the lean layer must apply
    calls = {}
    with torch.no_grad():
        enc = stock.get_encoder()(x)
        for m in (stock, lean):
            stock_calls.clear()
            m.want = [m(encoder_outputs=enc, decoder_input_ids=ids[:, :4], use_cache=True)]
            for i in range(4, 7):
                m.want.append(m(encoder_outputs=enc, decoder_input_ids=ids[:, i : i + 1], past_key_values=m.want[-1].past_key_values))
            m.masked = m(encoder_outputs=enc, decoder_input_ids=ids[:, :4], decoder_attention_mask=mask).logits
            m.tokens = m.generate(x, max_new_tokens=6)
            m.beams = m.generate(x, max_new_tokens=6, num_beams=3)  # the cache reordered between steps
            calls[m] = len(stock_calls)
        stock_calls.clear()
        with_weights = lean(encoder_outputs=enc, decoder_input_ids=ids[:, :4], output_attentions=True)
        fallback_calls = len(stock_calls)
        want_weights = stock(encoder_outputs=enc, decoder_input_ids=ids[:, :4], output_attentions=True)
    assert calls[stock] > 2 * 5 and calls[lean] == 0  # the stock model's layers ran; the lean model's did not
    assert fallback_calls == 2  # attention weights asked for: transformers' layer computes them
    # The same arithmetic; only q/k/v run as one product, which another BLAS may sum in another order. Measured
    # identical here (float32 and int8, logits up to ~6); 1e-4 allowed.
    for got, want in zip(lean.want, stock.want):
        assert torch.allclose(got.logits, want.logits, rtol=0, atol=1e-4)
    assert torch.allclose(lean.masked, stock.masked, rtol=0, atol=1e-4)
    assert not torch.allclose(stock.masked[1], stock.want[0].logits[1], atol=1e-2)  # the mask changed something
    for got, want in zip(with_weights.cross_attentions, want_weights.cross_attentions):
        assert torch.allclose(got, want, rtol=0, atol=1e-5)
    assert torch.equal(lean.tokens, stock.tokens) and torch.equal(lean.beams, stock.beams)


@pytest.mark.parametrize("support", ["native", "emulated"])
def test_optimize_for_cpu_follows_the_cpu(monkeypatch, support):
    import liteasr_hf.cpu as cpu

    monkeypatch.setattr(cpu, "cpu_bf16_support", lambda: support)
    model = optimize_for_cpu(tiny_whisper())
    encoder_dtype = next(model.get_encoder().parameters()).dtype
    decoder_linear = type(model.model.decoder.layers[0].fc1)
    if support == "native":  # bf16 everywhere, the output projection's approximate logits in int8
        from liteasr_hf.cpu import PackedLinear, can_pack_linears

        want = PackedLinear if can_pack_linears() else nn.Linear  # the step's bf16 products laid out for oneDNN
        assert encoder_dtype == torch.bfloat16 and decoder_linear is want and type(model.proj_out) is Int8Logits
        assert model.model.decoder.layers[0].fc1.weight.dtype == torch.bfloat16
    else:  # no bf16 hardware: fp32 encoder, int8 decoder (its fastest there), unless the caller names the decoder
        assert encoder_dtype == torch.float32 and decoder_linear is Int8Linear and type(model.proj_out) is Int8Logits
        kept = optimize_for_cpu(tiny_whisper(), decoder="fp32")
        assert type(kept.model.decoder.layers[0].fc1) is nn.Linear and kept.proj_out.weight.dtype == torch.float32
    # an explicit dtype is taken as given, whatever the CPU
    explicit = optimize_for_cpu(tiny_whisper(), dtype=torch.float32)
    assert type(explicit.model.decoder.layers[0].fc1) is nn.Linear and type(explicit.proj_out) is nn.Linear


def test_optimize_for_cpu_logits_choice():
    """`logits`: int8 by default where the decoder runs bf16 or int8, exact where it runs fp32, either on request;
    "exact" on the int8 decoder gives back the tied projection itself. Greedy tokens are those of the exact logits
    (the top 16 of each row are recomputed from the bf16 weight)."""
    model = tiny_whisper()
    tied = model.model.decoder.embed_tokens.weight
    exact = optimize_for_cpu(tiny_whisper(), dtype=torch.bfloat16, logits="exact", keep_memory=False)
    fast = optimize_for_cpu(tiny_whisper(), dtype=torch.bfloat16, keep_memory=False)
    assert type(exact.proj_out) is nn.Linear and type(fast.proj_out) is Int8Logits
    x = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fast.generate(x, max_new_tokens=6), exact.generate(x, max_new_tokens=6))
    assert type(optimize_for_cpu(tiny_whisper(), dtype=torch.float32, decoder="fp32", logits="int8").proj_out) is Int8Logits
    int8 = optimize_for_cpu(model, dtype=torch.float32, decoder="int8", logits="exact", keep_memory=False)
    assert type(int8.proj_out) is nn.Linear and int8.proj_out.weight is tied and type(int8.model.decoder.layers[0].fc1) is Int8Linear
    with pytest.raises(ValueError, match="logits must be 'int8' or 'exact'"):
        optimize_for_cpu(tiny_whisper(), logits="int4")


def test_optimize_for_cpu_rejects_a_gpu_model_and_a_bad_decoder():
    meta = tiny_whisper().to("meta")
    with pytest.raises(ValueError, match="for a model on the CPU"):
        optimize_for_cpu(meta)
    with pytest.raises(ValueError, match="decoder must be 'fp32', 'bf16' or 'int8'"):
        optimize_for_cpu(tiny_whisper(), decoder="int4")


def test_optimize_for_cpu_keeps_freed_memory_unless_told_not_to(monkeypatch):
    import platform

    import liteasr_hf.cpu as cpu

    if platform.libc_ver()[0] == "glibc":  # CI and this project's machines: mallopt takes both settings
        assert cpu.keep_freed_memory() is True
    calls = []
    monkeypatch.setattr(cpu, "keep_freed_memory", lambda: calls.append(1) or True)
    optimize_for_cpu(tiny_whisper(), dtype=torch.float32)
    assert calls == [1]
    optimize_for_cpu(tiny_whisper(), dtype=torch.float32, keep_memory=False)
    assert calls == [1]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["bf16", "fp16", "optimize_for_cpu", "optimize_for_cpu int8"])
def test_real_speech_in_low_precision_on_cpu(tiny_en_path, how):
    """Real tiny.en on the JFK clip: bf16 and fp16 generate, and the CPU fast path (bf16 where the CPU has it; with
    the int8 decoder), transcribe it as float32 does."""
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from liteasr_hf.audio import BUNDLED_CLIPS, load_clips
    from liteasr_hf.evaluation.wer import normalize

    clip = next(c for c in load_clips(BUNDLED_CLIPS, text_column=None) if c.id.startswith("jfk"))
    processor = AutoProcessor.from_pretrained(tiny_en_path)
    features = processor(clip.audio, sampling_rate=16_000, return_tensors="pt").input_features
    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    want = processor.batch_decode(dense.generate(features, num_beams=1), skip_special_tokens=True)[0]
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense)
    lite.config.encoder_context_buckets = [10.0, 15.0, 20.0]
    if how.startswith("optimize_for_cpu"):
        model = optimize_for_cpu(lite, decoder="int8" if how.endswith("int8") else None)
    else:
        model = lite.to(getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[how]))
    got = processor.batch_decode(model.generate(features.to(model.dtype), num_beams=1), skip_special_tokens=True)[0]
    assert normalize(got) == normalize(want), (got, want)


def test_the_output_projection_suppresses_the_generation_configs_tokens(tiny_en_path):
    """optimize_for_cpu moves the generation config's suppress_tokens into the output projection (SuppressedLogits):
    -inf there, the projection's logits unchanged elsewhere (adding 0 is exact), so greedy tokens on real speech are
    those of transformers' processor, which `unsuppress_logits_` puts back; a second optimize_for_cpu keeps them."""
    import copy

    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from liteasr_hf.audio import BUNDLED_CLIPS, load_clips
    from liteasr_hf.cpu import SuppressedLogits, unsuppress_logits_

    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    tokens = list(dense.generation_config.suppress_tokens)
    model = optimize_for_cpu(dense, dtype=torch.float32, decoder="fp32", keep_memory=False)
    no_speech = model.generation_config.no_timestamps_token_id - 1
    assert no_speech in tokens  # the no-speech token stays with the processor: long-form reads it before suppression
    assert isinstance(model.proj_out, SuppressedLogits) and list(model.proj_out.tokens) == tokens
    assert model.generation_config.suppress_tokens == [no_speech]
    stock = unsuppress_logits_(copy.deepcopy(model))
    assert type(stock.proj_out) is nn.Linear and stock.generation_config.suppress_tokens == tokens
    h = torch.randn(2, 3, model.config.d_model)
    with torch.no_grad():
        got, want = model.proj_out(h), stock.proj_out(h)
    suppressed = [t for t in tokens if t != no_speech]
    assert torch.isinf(got[..., suppressed]).all() and (got[..., suppressed] < 0).all()
    kept = torch.ones(got.shape[-1], dtype=torch.bool)
    kept[suppressed] = False
    assert torch.equal(got[..., kept], want[..., kept])
    processor = AutoProcessor.from_pretrained(tiny_en_path)
    clips = load_clips(BUNDLED_CLIPS, text_column=None)[:3]
    features = processor([c.audio for c in clips], sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        assert torch.equal(model.generate(features, max_new_tokens=40), stock.generate(features, max_new_tokens=40))
    again = optimize_for_cpu(model, dtype=torch.float32, decoder="fp32", keep_memory=False)
    assert list(again.proj_out.tokens) == tokens and type(again.proj_out.projection) is nn.Linear


@pytest.mark.slow
def test_pipeline_timestamps_through_the_cpu_fast_path(tiny_en_path):
    """Word timestamps need the decoder's cross-attention weights, which the lean decoder layer leaves to
    transformers' own: real tiny.en on the JFK clip through pipeline(), the int8 fast path against float32."""
    from transformers import AutoProcessor, WhisperForConditionalGeneration, pipeline

    from liteasr_hf.audio import BUNDLED_CLIPS, load_clips

    clip = next(c for c in load_clips(BUNDLED_CLIPS, text_column=None) if c.id.startswith("jfk"))
    processor = AutoProcessor.from_pretrained(tiny_en_path)
    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    plain, fast = LiteWhisperForConditionalGeneration.from_whisper(dense), LiteWhisperForConditionalGeneration.from_whisper(dense)
    optimize_for_cpu(fast, decoder="int8")
    asr = {m: pipeline("automatic-speech-recognition", model=m, tokenizer=processor.tokenizer,
                       feature_extractor=processor.feature_extractor) for m in (plain, fast)}
    for timestamps in ("word", True):
        want, got = (asr[m](clip.audio.copy(), return_timestamps=timestamps, generate_kwargs={"num_beams": 1}) for m in (plain, fast))
        assert [c["text"] for c in got["chunks"]] == [c["text"] for c in want["chunks"]] and len(want["chunks"]) > 1
        # Word times come from DTW over the cross-attention weights: bf16 encoder and int8 decoder moved them by
        # 0.02 s at most here (one 20 ms frame); 0.1 s allowed. Segment times are predicted tokens: the same here.
        assert all(abs(a - b) <= 0.1 for g, w in zip(got["chunks"], want["chunks"]) for a, b in zip(g["timestamp"], w["timestamp"]))


def test_equal_row_groups_finds_runs_equal_in_every_batch_row():
    from liteasr_hf.cpu import equal_row_groups

    rows = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    a = rows[[0, 0, 2, 3, 3, 3, 6]]  # runs: 0-1, 2, 3-5, 6
    b = rows[[0, 1, 2, 4, 4, 4, 6]] + 100  # runs: 0, 1, 2, 3-5, 6
    starts, counts = equal_row_groups(a[None])
    assert starts.tolist() == [0, 2, 3, 6] and counts.tolist() == [2, 1, 3, 1]
    starts, counts = equal_row_groups(torch.stack([a, b]))  # a run must hold in every batch row
    assert starts.tolist() == [0, 1, 2, 3, 6] and counts.tolist() == [1, 1, 1, 3, 1]
    assert int(counts.sum()) == 7
    assert equal_row_groups(rows[None]) is None  # no two neighbours equal
    starts, counts = equal_row_groups(rows[[5] * 4][None])  # one run over everything
    assert starts.tolist() == [0] and counts.tolist() == [4]


def test_equal_row_groups_of_a_strided_encoder_are_its_padding_groups():
    """The strided encoder repeats each padding group's row over the group: grouping its output by equality gives the
    plan's groups (the dense rows, different from their neighbours, one each)."""
    from liteasr_hf.cpu import equal_row_groups
    from liteasr_hf.lite_whisper.context_lite_whisper import ContextSettings

    dense = tiny_whisper()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, RANKS, random_factors(dense, RANKS))
    x = torch.randn(1, 80, 100, generator=torch.Generator().manual_seed(0))
    x[..., 30:] = -1.0  # 30 frames of audio, then padding
    settings = ContextSettings(None, 0.1, 4, full_frames=100)
    with torch.no_grad():
        out = lite.get_encoder()(x, encoder_context=settings).last_hidden_state
    index, counts = settings.plan(30).groups()
    starts, got = equal_row_groups(out)
    assert torch.equal(got, counts) and torch.equal(starts, torch.cumsum(counts, 0) - counts)
    assert got.tolist() == [1] * 20 + [4] * 7 + [2]


def test_a_model_with_inference_only_modules_refuses_save_pretrained(tmp_path):
    """lean_decoder_'s LeanDecoderLayer and int8_decoder_'s Int8Linear / Int8Logits hold fused, quantized weights and code no
    checkpoint carries: save_pretrained raises a ValueError naming them and writes nothing; the model as loaded saves."""
    import copy
    import os

    from liteasr_hf.cpu import LeanDecoderLayer

    dense = tiny_whisper()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, RANKS, random_factors(dense, RANKS))
    lite.save_pretrained(tmp_path / "plain")
    assert os.path.isfile(tmp_path / "plain" / "config.json")
    lean = lean_decoder_(copy.deepcopy(lite))
    assert all(isinstance(layer, LeanDecoderLayer) for layer in lean.model.decoder.layers)
    with pytest.raises(ValueError, match=r"inference-only modules \(LeanDecoderLayer, from optimize_for_cpu\)"):
        lean.save_pretrained(tmp_path / "lean")
    if hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        both = int8_decoder_(copy.deepcopy(lean))
        assert any(isinstance(m, Int8Linear) for m in both.modules())
        with pytest.raises(ValueError, match=r"\(Int8Linear, Int8Logits, LeanDecoderLayer, from optimize_for_cpu\)"):
            both.save_pretrained(tmp_path / "both")
        only_int8 = int8_decoder_(copy.deepcopy(lite))
        with pytest.raises(ValueError, match=r"\(Int8Linear, Int8Logits, from optimize_for_cpu\)"):
            only_int8.save_pretrained(tmp_path / "int8")
    assert not any(os.path.exists(tmp_path / name) for name in ("lean", "both", "int8"))


@pytest.mark.skipif(not __import__("liteasr_hf.cpu").cpu.can_pack_linears(), reason="this torch packs no oneDNN weights")
def test_packed_linear_is_the_linear_it_packs():
    """PackedLinear against F.linear on the same bf16 weight: the same numbers at 1-16 rows and with leading dims
    (oneDNN computes both; only the weight's layout differs). Checked bit for bit where measured; 1 bf16 ulp of the
    output's magnitude (~0.06 for outputs up to ~8) is allowed for another oneDNN's blocking order."""
    from liteasr_hf.cpu import PackedLinear

    g = torch.Generator().manual_seed(0)
    for d_in, d_out, bias in ((64, 192, True), (256, 64, False)):
        linear = nn.Linear(d_in, d_out, bias=bias).to(torch.bfloat16)
        packed = PackedLinear(linear)
        for shape in ((1, d_in), (8, d_in), (16, d_in), (2, 3, d_in)):
            x = torch.randn(*shape, generator=g).to(torch.bfloat16)
            want, got = linear(x), packed(x)
            assert got.shape == want.shape and got.dtype == torch.bfloat16
            assert torch.allclose(got.float(), want.float(), rtol=0, atol=0.07), (got - want).abs().max()


def test_optimize_for_cpu_packs_the_decoder_products_only_in_bf16(monkeypatch):
    """bf16 decoder: the step's products are PackedLinears where torch can pack; fp32 decoder: none are."""
    import copy

    from liteasr_hf.cpu import PackedLinear, can_pack_linears

    dense = tiny_whisper()
    fp32 = optimize_for_cpu(copy.deepcopy(dense), dtype=torch.float32, decoder="fp32", keep_memory=False)
    assert not any(isinstance(m, PackedLinear) for m in fp32.modules())
    bf16 = optimize_for_cpu(copy.deepcopy(dense), dtype=torch.bfloat16, decoder="bf16", keep_memory=False)
    layer = bf16.model.decoder.layers[0]
    packed = [layer.qkv_proj, layer.self_attn.out_proj, layer.encoder_attn.q_proj, layer.encoder_attn.out_proj,
              layer.fc1, layer.fc2]
    assert all(isinstance(m, PackedLinear) for m in packed) == can_pack_linears()
    assert type(layer.encoder_attn.k_proj) is nn.Linear  # once per clip, over every frame: left as it is
    x = torch.randn(1, 80, 100)
    with torch.no_grad():  # the whole model still decodes
        assert bf16.generate(x, max_new_tokens=3).shape[0] == 1
        fc1 = copy.deepcopy(layer.fc1).float()  # a conversion packs again from the weight, or (not bf16) not at all
        h = torch.randn(2, fc1.in_features)
        assert fc1.packed is None and torch.equal(fc1(h), nn.functional.linear(h, fc1.weight, fc1.bias))
