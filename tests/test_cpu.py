"""The CPU fast path (liteasr_hf.optimize_for_cpu) and bf16 generation on the CPU."""

import pytest
import torch
from torch import nn

from liteasr_hf import LiteWhisperForConditionalGeneration, optimize_for_cpu
from liteasr_hf.cpu import cpu_bf16_support
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
    assert not [m for m in int8.model.decoder.modules() if type(m) is nn.Linear]
    assert "quantized" in type(int8.proj_out).__module__
    # int8 weights (one scale per tensor) and activations (one scale per call): measured 4.7 % RMS on the logits of
    # these random N(0, 0.2) weights, whose largest entries set the scales; 8 % allowed.
    assert float(((got8 - want) ** 2).mean().sqrt() / (want**2).mean().sqrt()) < 0.08
    assert int8.generate(x, max_new_tokens=4).shape[0] == 2


def test_optimize_for_cpu_rejects_a_gpu_model_and_follows_the_cpu():
    model = tiny_whisper()
    if cpu_bf16_support() == "native":
        assert next(optimize_for_cpu(model).get_encoder().parameters()).dtype == torch.bfloat16
    else:
        assert next(optimize_for_cpu(model).get_encoder().parameters()).dtype == torch.float32
    meta = tiny_whisper().to("meta")
    with pytest.raises(ValueError, match="for a model on the CPU"):
        optimize_for_cpu(meta)
    with pytest.raises(ValueError, match="decoder must be 'fp32', 'bf16' or 'int8'"):
        optimize_for_cpu(tiny_whisper(), decoder="int4")


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
