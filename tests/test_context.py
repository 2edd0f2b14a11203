"""Dynamic encoder context: the encoder runs on the bucket that covers the audio instead of the full window.

The tiny models' window is 1 s (100 mel frames, 50 encoder positions), so buckets here are fractions of a second.
"""

import copy

import pytest
import torch
from torch import nn

from liteasr_hf import LiteWhisperConfig, LiteWhisperForConditionalGeneration, LowRankLinear
from liteasr_hf.lite_whisper.modeling_lite_whisper import audio_frames, context_frames
from modeling_utils import SAMPLING_RATE, random_factors, tiny_audio, tiny_config, tiny_processor, tiny_whisper

RANKS = [{"q_proj": 4, "k_proj": 6, "v_proj": 5, "fc1": 10}, {"k_proj": 3, "out_proj": 8}]


def lite_model(buckets=None, margin=0.1):
    dense = tiny_whisper()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, RANKS, random_factors(dense, RANKS))
    lite.config.encoder_context_buckets, lite.config.encoder_context_margin = buckets, margin
    return dense, lite


def features(processor, seconds):
    """Feature-extractor output for clips of these lengths, padded to the 1 s window, with its attention mask."""
    audios = [tiny_audio(seed=i, seconds=s) for i, s in enumerate(seconds)]
    return processor.feature_extractor(audios, sampling_rate=SAMPLING_RATE, return_tensors="pt",
                                       return_attention_mask=True)


def trimmed_reference(model, frames):
    """A plain Whisper whose window is `frames` mel frames: positions sliced, nothing else changed."""
    ref = copy.deepcopy(model)
    encoder = ref.get_encoder()
    encoder.config.max_source_positions = frames // 2
    encoder.embed_positions = nn.Embedding.from_pretrained(encoder.embed_positions.weight[: frames // 2].clone())
    return ref


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return tiny_processor(tmp_path_factory.mktemp("processor"))


def test_full_context_gives_todays_outputs(processor):
    """No buckets (every published config) and buckets that never fit both run the full window: bit-identical
    encoder outputs and tokens to the code before dynamic context, i.e. Whisper's own encoder forward."""
    feats = features(processor, [0.3, 0.9])
    for buckets in (None, [0.2]):  # 0.9 s + margin fits no 0.2 s bucket
        _, lite = lite_model(buckets)
        with torch.no_grad():
            ours = lite.get_encoder()(feats.input_features, attention_mask=feats.attention_mask).last_hidden_state
            whisper = super(type(lite.get_encoder()), lite.get_encoder()).forward(feats.input_features).last_hidden_state
        assert ours.shape[1] == 50 and torch.equal(ours, whisper)


def test_trimmed_encoder_equals_plain_reference(processor):
    """0.3 s of audio + 0.1 s margin -> the 0.4 s bucket: 40 mel frames. The same as a dense Whisper whose window is
    40 frames, given the first 40 frames (float64, so only summation order differs: 1e-12)."""
    dense, lite = lite_model([0.4, 0.6])
    dense, lite = dense.double(), lite.double()
    feats = features(processor, [0.3])
    x = feats.input_features.double()
    with torch.no_grad():
        out = lite.get_encoder()(x, attention_mask=feats.attention_mask).last_hidden_state
        densified = copy.deepcopy(dense)
        for name, module in lite.get_encoder().named_modules():  # the lite model's products as dense weights
            if isinstance(module, LowRankLinear):
                linear = nn.Linear(module.in_features, module.out_features, dtype=torch.float64)
                linear.weight.data = (module.weight1 @ module.weight2).T.contiguous()
                linear.bias.data = module.bias.detach().clone()
                densified.get_encoder().set_submodule(name, linear)
        expected = trimmed_reference(densified, 40).get_encoder()(x[..., :40]).last_hidden_state
    assert out.shape == (1, 20, 64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_bucket_from_mask_and_from_padding_floor(processor):
    feats = features(processor, [0.25, 0.5])
    mask_frames = audio_frames(feats.input_features, feats.attention_mask)
    assert mask_frames.tolist() == [25, 50]  # one frame per started 10 ms
    floor_frames = audio_frames(feats.input_features)  # no mask: the first all-floor frame after the audio
    assert ((floor_frames - mask_frames).abs() <= 2).all(), (floor_frames, mask_frames)
    # long-form generate pads its last segment with zeros, not the floor; a whole-recording mask does not match
    zeros = torch.cat([feats.input_features[:, :, :50], torch.zeros(2, 80, 50)], dim=-1)
    assert (audio_frames(zeros, torch.ones(2, 300)) <= 52).all()
    buckets = [0.4, 0.6, 0.8]
    # a batch takes the bucket of its longest clip: 0.5 s + 0.1 s margin = 60 frames -> 0.6 s
    assert context_frames(feats.input_features, feats.attention_mask, buckets, 0.1, 100) == 60
    assert context_frames(feats.input_features[:1], feats.attention_mask[:1], buckets, 0.1, 100) == 40
    assert context_frames(feats.input_features, feats.attention_mask, buckets, 0.35, 100) == 100  # 0.85 s: full
    assert context_frames(feats.input_features, feats.attention_mask, None, 0.1, 100) == 100


def test_short_features_are_padded_as_the_feature_extractor_pads(processor):
    """Features cut after the audio (as padding="longest" leaves them) give what the padded ones give, with and without
    buckets: the padding is rebuilt from the clip's maximum (2 below it), to float rounding (1e-5)."""
    feats = features(processor, [0.3, 0.2])
    for buckets in (None, [0.6]):
        _, lite = lite_model(buckets)
        with torch.no_grad():
            want = lite.get_encoder()(feats.input_features).last_hidden_state
            got = lite.get_encoder()(feats.input_features[..., :35]).last_hidden_state
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got.shape[1] == (50 if buckets is None else 30)


def test_mixed_lengths_generate_like_each_alone(processor):
    """A batch runs at its longest clip's bucket; each clip decodes as it does alone at that bucket. (The language is
    given: detection runs the encoder without the mask, where the floor estimate may pick the next bucket.)"""
    _, lite = lite_model([0.4, 0.6])
    feats = features(processor, [0.2, 0.5])
    kw = dict(max_new_tokens=6, language="en")
    batch = lite.generate(feats.input_features, attention_mask=feats.attention_mask, **kw)
    for i in range(2):
        with lite.get_encoder().encoder_context([0.6]):  # the batch's bucket, for the short clip too
            alone = lite.generate(feats.input_features[i : i + 1], attention_mask=feats.attention_mask[i : i + 1], **kw)
        assert torch.equal(batch[i, : alone.shape[1]], alone[0]), i


def test_per_call_override_and_short_features(processor):
    _, lite = lite_model([0.4])
    feats = features(processor, [0.2])
    encoder = lite.get_encoder()
    seen = []
    hook = encoder.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    kw = dict(max_new_tokens=2, language="en")
    lite.generate(feats.input_features, attention_mask=feats.attention_mask, **kw)
    lite.generate(feats.input_features, attention_mask=feats.attention_mask, encoder_context_buckets=None, **kw)
    lite.generate(feats.input_features, encoder_context_buckets=[0.6], encoder_context_margin=0.3, **kw)
    with torch.no_grad():
        encoder(feats.input_features[..., :30])  # shorter than the bucket: padded with its floor up to 0.4 s
    hook.remove()
    assert seen == [20, 50, 30, 20]
    assert encoder.context_settings() == ([0.4], 0.1)  # the overrides ended with their calls
    with pytest.raises(ValueError, match="at most 100 mel frames"):
        encoder(torch.zeros(1, 80, 102))


def test_transcribe_extracts_features_on_the_bucket_it_will_run(processor, monkeypatch):
    """`transcribe` pads features to the context bucket instead of the whole window: the features the encoder reads
    are the same numbers (checked: 0 difference), so the tokens are those of the full-window features. The window is
    the smallest bucket holding audio + margin + n_fft samples; the full window without buckets or for a dense model."""
    from liteasr_hf.evaluation import run

    fe = processor.feature_extractor
    dense, lite = lite_model([0.4, 0.6])
    audios = [tiny_audio(seed=1, seconds=0.2), tiny_audio(seed=2, seconds=0.45)]
    assert run.feature_window(lite, fe, 3200, {}) == 6400  # 0.2 s + 0.1 s + 400 samples = 0.325 s -> 0.4 s
    assert run.feature_window(lite, fe, 4500, {}) == 9600  # 0.28 s + 0.1 s + 400 samples = 0.406 s -> 0.6 s
    assert run.feature_window(lite, fe, 8000, {}) == 16000  # fits no bucket: the window
    assert run.feature_window(lite, fe, 3200, {"encoder_context_buckets": None}) == 16000
    assert run.feature_window(lite, fe, 3200, {"encoder_context_buckets": [0.8], "encoder_context_margin": 0.0}) == 12800
    assert run.feature_window(dense, fe, 3200, {}) == 16000
    # no buckets but a padding stride: the audio + margin + n_fft only (the encoder writes the padding past that)
    assert run.feature_window(lite, fe, 3200, {"encoder_context_buckets": None, "encoder_padding_stride": 4}) == 3200 + 1600 + 400
    assert run.feature_window(lite, fe, 15000, {"encoder_context_buckets": None, "encoder_padding_stride": 4}) == 16000

    for batch in (1, 2):
        widths, generate = [], lite.generate
        monkeypatch.setattr(lite, "generate", lambda x, **kw: widths.append(x.shape[-1]) or generate(x, **kw))
        got = run.transcribe(lite, processor, audios, batch, max_new_tokens=5, language="en")
        monkeypatch.setattr(run, "feature_window", lambda model, fe, samples, gen: fe.n_samples)
        want = run.transcribe(lite, processor, audios, batch, max_new_tokens=5, language="en")
        monkeypatch.undo()
        assert got == want
        assert widths[: 3 - batch] == ([40, 60] if batch == 1 else [60]) and widths[3 - batch :] == [100] * (3 - batch)
    full = fe(audios[:1], sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
    short = fe(audios[:1], sampling_rate=SAMPLING_RATE, return_tensors="pt", padding="longest",
               pad_to_multiple_of=6400).input_features
    assert torch.equal(short, full[..., :40])


@pytest.mark.parametrize("buckets, margin, message", [
    ([10, 40], 1.0, r"encoder_context_buckets: 40 is not a number of seconds in \(0, 30\]"),
    ([10.01], 1.0, "not a whole number of encoder frames"),
    ([], 1.0, "encoder_context_buckets is empty"),
    ([20, 10], 1.0, "must ascend"),
    ("10", 1.0, "must be a list of seconds"),
    ([10], -0.5, "encoder_context_margin must be a number of seconds >= 0"),
])
def test_bad_context_config_names_the_field(buckets, margin, message):
    with pytest.raises(ValueError, match=message):
        LiteWhisperConfig(encoder_context_buckets=buckets, encoder_context_margin=margin)


def test_bad_per_call_context_names_the_argument():
    _, lite = lite_model()
    with pytest.raises(ValueError, match=r"encoder_context_buckets: 2 is not a number of seconds in \(0, 1\]"):
        lite.generate(torch.zeros(1, 80, 100), encoder_context_buckets=[0.5, 2])
    with pytest.raises(ValueError, match="encoder_context_margin"):
        lite.generate(torch.zeros(1, 80, 100), encoder_context_margin=-1)


def test_context_round_trips_through_config(tmp_path):
    config = LiteWhisperConfig(**{k: v for k, v in tiny_config().to_dict().items() if k != "model_type"},
                               encoder_context_buckets=[0.4, 0.6], encoder_context_margin=0.2)
    config.save_pretrained(tmp_path)
    again = LiteWhisperConfig.from_pretrained(tmp_path)
    assert (again.encoder_context_buckets, again.encoder_context_margin) == ([0.4, 0.6], 0.2)
    assert LiteWhisperConfig().encoder_context_buckets is None  # published checkpoints: full window


FRESH_PROCESS = r"""
import json, sys
sys.modules["liteasr_hf"] = None  # the package must not be what runs
import torch
from transformers import AutoModelForSpeechSeq2Seq, pipeline
folder, audio = sys.argv[1], torch.load(sys.argv[2]).numpy()
model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
seen = []
model.model.encoder.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
asr.model.model.encoder.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
asr(audio, generate_kwargs={"max_new_tokens": 2, "language": "en"})
asr(audio, generate_kwargs={"max_new_tokens": 2, "language": "en", "encoder_context_buckets": None})
print("RESULT" + json.dumps(seen))
"""


def positions_in_fresh_process(lite, processor, tmp_path):
    """Save `lite`, load the folder in a fresh process without the package (trust_remote_code alone), run a 0.25 s
    clip through its pipeline twice (config context, then encoder_context_buckets=None): the positions encoder
    layer 0 saw each time."""
    import json
    import os
    import subprocess
    import sys

    from liteasr_hf import save_lite_checkpoint

    folder = save_lite_checkpoint(lite, str(tmp_path / "saved"), processor=processor)
    torch.save(torch.from_numpy(tiny_audio(seconds=0.25)), tmp_path / "audio.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-I", "-c", FRESH_PROCESS, folder, str(tmp_path / "audio.pt")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULT", 1)[1])


def test_saved_folder_uses_its_context_with_trust_remote_code_alone(processor, tmp_path):
    _, lite = lite_model([0.4, 0.6], margin=0.1)
    # 0.25 s + 0.1 s margin -> the 0.4 s bucket (20 positions); the per-call override -> the full 50
    assert positions_in_fresh_process(lite, processor, tmp_path) == [20, 50]


@pytest.fixture(scope="module")
def real_context_model(tiny_en_path):
    """Real tiny.en twice: as Whisper ships it, and wrapped as lite-whisper with the default dynamic context."""
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense)
    lite.config.encoder_context_buckets, lite.config.encoder_context_margin = [10.0, 15.0, 20.0], 1.0
    return dense, lite, AutoProcessor.from_pretrained(tiny_en_path)


def shipped(prefix):
    from liteasr_hf.audio import BUNDLED_CLIPS, load_clips

    return [c for c in load_clips(BUNDLED_CLIPS, text_column=None) if c.id.startswith(prefix)]


@pytest.mark.slow
def test_pipeline_long_form_batches_and_timestamps_under_dynamic_context(real_context_model):
    """Real tiny.en, 36 s of speech (JFK + the LibriVox clips): sequential long-form (its last window is short and runs
    at a bucket), chunked with a batch of mixed-length chunks, segment and word timestamps. Each gives the text of
    the full-window model; word times stay within 0.1 s of the full window's (the DTW runs over the same positions:
    the trimmed ones held only padding)."""
    import numpy as np
    from transformers import pipeline

    dense, lite, processor = real_context_model
    audio = np.concatenate([c.audio for c in shipped("jfk") + shipped("librivox")])
    assert 35 < len(audio) / 16_000 < 40
    make = lambda model: pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                                  feature_extractor=processor.feature_extractor)
    ours, theirs = make(lite), make(dense)
    seen = []
    lite.get_encoder().layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    gen = {"num_beams": 1}
    # sequential: full windows, then a short last one; chunked (30 s chunks, 5 s strides: 0-30 s, 20-36 s): batched,
    # both run at the longer chunk's full window; one at a time, the second runs at the 20 s bucket
    for kwargs, positions in (({"return_timestamps": True}, lambda s: min(s) < 1500 == max(s)),
                              ({"chunk_length_s": 30, "batch_size": 2}, lambda s: s == [1500]),
                              ({"chunk_length_s": 30, "batch_size": 1}, lambda s: s == [1500, 1000])):
        seen.clear()
        got, want = ours(audio.copy(), generate_kwargs=gen, **kwargs), theirs(audio.copy(), generate_kwargs=gen, **kwargs)
        assert got["text"] == want["text"] and len(got["text"]) > 300, kwargs
        assert positions(seen), (kwargs, seen)
        if "chunks" in want:
            # Segment times are the decoder's own predictions. The full windows give the same ones; in the short
            # last window they moved by 0.3 s (start) and 0.6 s (end, into the kept margin) here: 0.75 s allowed.
            assert len(got["chunks"]) == len(want["chunks"])
            for g, w in zip(got["chunks"], want["chunks"]):
                assert g["text"] == w["text"] and all(abs(a - b) <= 0.75 for a, b in zip(g["timestamp"], w["timestamp"])), (g, w)
    clip = shipped("jfk")[0].audio
    got, want = (p(clip.copy(), return_timestamps="word", generate_kwargs=gen) for p in (ours, theirs))
    assert [c["text"] for c in got["chunks"]] == [c["text"] for c in want["chunks"]]
    diffs = [abs(a - b) for g, w in zip(got["chunks"], want["chunks"]) for a, b in zip(g["timestamp"], w["timestamp"])]
    assert max(diffs) <= 0.1, diffs
