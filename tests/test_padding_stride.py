"""Encoder padding stride: past the audio plus the margin, the encoder runs on one padding frame in s, each standing
for its group (log(count) added to its attention scores), and repeats its output over the group.

The tiny models' window is 1 s (100 mel frames, 50 encoder positions).
"""

import copy
import json

import pytest
import torch
from torch import nn

from liteasr_hf import LiteWhisperConfig, LiteWhisperForConditionalGeneration, LowRankLinear, optimize_for_cpu
from liteasr_hf.lite_whisper.context_lite_whisper import ContextPlan, ContextSettings, padding_groups
from modeling_utils import (
    features,
    lite_and_dense_pipelines,
    lite_model,
    positions_in_fresh_process,
    random_factors,
    shipped,
    tiny_whisper,
)


def test_padding_groups():
    index, counts = padding_groups(10, 4, 4)
    assert index.tolist() == [0, 1, 2, 3, 5, 8]  # groups 4-7 and 8-9, each by its middle frame
    assert counts.tolist() == [1, 1, 1, 1, 4, 2] and int(counts.sum()) == 10
    index, counts = padding_groups(10, 12, 4)  # the audio fills the context: every frame
    assert index.tolist() == list(range(10)) and counts.tolist() == [1] * 10


def densified_reference(dense, lite):
    """A plain Whisper encoder in float64: `dense` with the lite model's low-rank products as nn.Linear weights (the
    lite model copied every other weight from it), run by transformers' own eager layers."""
    reference = copy.deepcopy(dense).double()
    for name, module in lite.get_encoder().named_modules():
        if isinstance(module, LowRankLinear):
            linear = nn.Linear(module.in_features, module.out_features, dtype=torch.float64)
            linear.weight.data = (module.weight1 @ module.weight2).T.contiguous()
            linear.bias.data = module.bias.detach().clone()
            reference.get_encoder().set_submodule(name, linear)
    reference.config._attn_implementation = "eager"
    return reference.get_encoder()


@pytest.mark.parametrize("attention", ["liteasr", "sdpa", "eager"])
def test_strided_encoder_equals_every_frame_of_grouped_inputs(processor, attention):
    """The strided encoder against a plain reference on every frame: Whisper's own layers, whose inputs in each padding
    group are all the group's middle frame (the stem's output plus its position). Equal inputs stay equal through the
    layers, and softmax over `count` equal keys is softmax with log(count) on one, so the two agree on every position
    (float64: only summation order differs, 1e-10). 0.3 s of audio + 0.1 s margin = 20 positions dense, the other
    30 in groups of 4. liteasr: rank-space attention (the key bias), sdpa / eager: transformers' mask path."""
    dense, lite = lite_model(None, margin=0.1)
    lite = lite.double()
    lite.config._attn_implementation = attention
    lite.config.encoder_padding_stride = 4
    feats = features(processor, [0.3])
    x = feats.input_features.double()
    encoder = lite.get_encoder()
    seen = []
    hook = encoder.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        got = encoder(x, attention_mask=feats.attention_mask).last_hidden_state
        index, counts = padding_groups(50, 20, 4)
        stem = torch.nn.functional.gelu(encoder.conv2(torch.nn.functional.gelu(encoder.conv1(x)))).permute(0, 2, 1)
        h = (stem + encoder.embed_positions.weight[:50])[:, index.repeat_interleave(counts)]
        reference = densified_reference(dense, lite)
        for layer in reference.layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        want = reference.layer_norm(h)
    hook.remove()
    assert seen == [20 + 8]  # 30 padding positions in 8 groups (7 of 4, one of 2)
    assert got.shape == (1, 50, 64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_stride_one_and_full_audio_run_every_frame(processor):
    """Stride 1 (every published config) is today's encoder bit for bit; so is any stride where the audio and margin
    fill the context."""
    _, lite = lite_model([0.4, 0.6], margin=0.1)
    feats = features(processor, [0.2, 0.5])
    encoder = lite.get_encoder()
    runs = {}
    with torch.no_grad():
        for stride in (1, 4):
            settings = encoder.context_settings().replace(padding_stride=stride)
            runs[stride] = [encoder(feats.input_features[i : i + 1], attention_mask=feats.attention_mask[i : i + 1],
                                    encoder_context=settings).last_hidden_state for i in range(2)]
    assert LiteWhisperConfig().encoder_padding_stride == 1 and encoder.context_settings().padding_stride == 1
    assert lite.config.encoder_padding_stride == 1  # the per-call settings left the config as it was
    # 0.2 s + 0.1 s in the 0.4 s bucket: 15 of 20 positions dense, 5 in two groups
    assert runs[4][0].shape == runs[1][0].shape == (1, 20, 64) and not torch.equal(runs[4][0], runs[1][0])
    assert torch.equal(runs[4][1], runs[1][1])  # 0.5 s + 0.1 s fill the 0.6 s bucket: no padding group


def test_generate_uses_config_stride_and_per_call_override(processor, tmp_path):
    _, lite = lite_model(None, margin=0.1)
    lite.config.encoder_padding_stride = 5
    feats = features(processor, [0.2])
    seen = []
    hook = lite.get_encoder().layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    kw = dict(attention_mask=feats.attention_mask, max_new_tokens=2, language="en", guard_loops=False)  # (guard: test_context)
    lite.generate(feats.input_features, **kw)
    lite.generate(feats.input_features, encoder_padding_stride=1, **kw)
    lite.generate(feats.input_features, encoder_padding_stride=10, **kw)
    settings = lite.get_encoder().context_settings()
    lite.generate(feats.input_features, encoder_context=settings.replace(padding_stride=10), **kw)
    lite.generate(feats.input_features, encoder_context=ContextPlan(100, 15, 10), **kw)
    hook.remove()
    # 0.2 s + 0.1 s = 15 dense positions; the other 35 in groups of 5 (7) or 10 (4)
    assert seen == [15 + 7, 50, 15 + 4, 15 + 4, 15 + 4]
    # the overrides ended with their calls: the config's settings are as they were
    assert settings == ContextSettings(None, 0.1, 5, 100) and lite.config.encoder_padding_stride == 5
    lite.config.save_pretrained(tmp_path)
    assert json.load(open(tmp_path / "config.json"))["encoder_padding_stride"] == 5
    assert LiteWhisperConfig.from_pretrained(tmp_path).encoder_padding_stride == 5


@pytest.mark.parametrize("stride", [0, -2, 1.5, True, "4", 51])
def test_bad_padding_stride_names_the_field(stride):
    with pytest.raises(ValueError, match=r"encoder_padding_stride must be a whole number of encoder frames in \[1, "):
        LiteWhisperConfig(encoder_padding_stride=stride, max_source_positions=50)
    _, lite = lite_model()
    with pytest.raises(ValueError, match="encoder_padding_stride"):
        lite.generate(torch.zeros(1, 80, 100), encoder_padding_stride=stride)
    with pytest.raises(ValueError, match="encoder_padding_stride"):
        lite.get_encoder().context_settings().replace(padding_stride=stride)


def test_lean_decoder_projects_and_attends_each_group_once(processor):
    """Under optimize_for_cpu the cross-attention keys / values are computed and cached on one row per padding group,
    each group's score raised by log(count): the same tokens and scores as transformers' own decoder layers on every
    row (float32 decoder: only summation order differs, 1e-4 on logits of magnitude ~10)."""
    dense = tiny_whisper()
    ranks = [{"q_proj": 4, "fc1": 10}, {"k_proj": 3}]
    plain = LiteWhisperForConditionalGeneration.from_whisper(dense, ranks, random_factors(dense, ranks))
    plain.config.encoder_context_margin, plain.config.encoder_padding_stride = 0.1, 4
    fast = optimize_for_cpu(copy.deepcopy(plain), dtype=torch.float32, decoder="fp32", keep_memory=False)
    feats = features(processor, [0.3])
    rows = []
    hook = fast.model.decoder.layers[0].encoder_attn.k_proj.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[1]))
    kw = dict(attention_mask=feats.attention_mask, max_new_tokens=6, language="en", output_scores=True,
              return_dict_in_generate=True)
    want, got = plain.generate(feats.input_features, **kw), fast.generate(feats.input_features, **kw)
    hook.remove()
    assert rows == [20 + 8]  # once per clip, one row per group
    assert [layer.keys.shape[2] for layer in got.past_key_values.cross_attention_cache.layers] == [28, 28]
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite) and torch.allclose(a[finite], b[finite], atol=1e-4)


def test_grouped_cross_cache_is_ungrouped_for_transformers_layers(processor):
    """A step that needs transformers' own decoder layer (here: attention weights) after a lean step that cached the
    keys / values grouped gets them repeated back over every frame: the logits of a plain model's two steps."""
    dense = tiny_whisper()
    plain = LiteWhisperForConditionalGeneration.from_whisper(dense)
    plain.config.encoder_context_margin, plain.config.encoder_padding_stride = 0.1, 4
    plain.config._attn_implementation = "liteasr"  # SDPA gives no attention weights
    fast = optimize_for_cpu(copy.deepcopy(plain), dtype=torch.float32, decoder="fp32", keep_memory=False)
    feats = features(processor, [0.3])
    start = torch.tensor([[plain.config.decoder_start_token_id]])
    logits = []
    for model in (fast, plain):
        with torch.no_grad():
            enc = model.get_encoder()(feats.input_features, attention_mask=feats.attention_mask)
            first = model(encoder_outputs=enc, decoder_input_ids=start, use_cache=True)
            step = model(encoder_outputs=enc, decoder_input_ids=first.logits.argmax(-1), past_key_values=first.past_key_values,
                         use_cache=True, output_attentions=True)
        logits.append((first.logits, step.logits, step.cross_attentions[0].shape[-1]))
    assert logits[0][2] == logits[1][2] == 50  # every frame in the attention weights
    assert torch.allclose(logits[0][0], logits[1][0], atol=1e-4) and torch.allclose(logits[0][1], logits[1][1], atol=1e-4)


@pytest.mark.slow
def test_real_speech_long_form_and_word_timestamps_with_padding_stride(real_context_model):
    """Real tiny.en with the default dynamic context at stride 4 against the full-window model: sequential long-form
    (36 s; its last window is short, so strided), and word timestamps on the JFK clip (11 s: its 15 s bucket has
    ~3 s of padding groups). The same text; word times within 0.1 s (DTW over the same 20 ms positions, the speech's
    own unchanged in kind)."""
    import numpy as np

    dense, lite, processor = real_context_model
    lite = copy.deepcopy(lite)
    lite.config.encoder_padding_stride = 4
    ours, theirs, seen = lite_and_dense_pipelines(lite, dense, processor)
    gen = {"num_beams": 1}
    audio = np.concatenate([c.audio for c in shipped("jfk") + shipped("librivox")])
    got, want = (p(audio.copy(), return_timestamps=True, generate_kwargs=gen) for p in (ours, theirs))
    assert got["text"] == want["text"] and len(got["text"]) > 300
    # full windows, then a short last one, strided: fewer positions than any bucket has
    assert max(seen) == 1500 and min(seen) not in (500, 750, 1000, 1500), seen
    clip = shipped("jfk")[0].audio
    got, want = (p(clip.copy(), return_timestamps="word", generate_kwargs=gen) for p in (ours, theirs))
    assert [c["text"] for c in got["chunks"]] == [c["text"] for c in want["chunks"]]
    diffs = [abs(a - b) for g, w in zip(got["chunks"], want["chunks"]) for a, b in zip(g["timestamp"], w["timestamp"])]
    assert max(diffs) <= 0.1, diffs


def test_saved_folder_uses_its_padding_stride_with_trust_remote_code_alone(processor, tmp_path):
    _, lite = lite_model([0.4, 0.6], margin=0.1)
    lite.config.encoder_padding_stride = 4
    # 0.25 s + 0.1 s = 18 dense positions; the 0.4 s bucket's other 2 in one group, the full window's other 32 in 8
    assert positions_in_fresh_process(lite, processor, tmp_path) == [18 + 1, 18 + 8]
