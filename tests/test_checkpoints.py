"""Self-contained lite checkpoints: save -> load, trust_remote_code without the package, the published LiteASR layout,
the ASR pipeline, and errors for checkpoints that disagree with their config."""

import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForSpeechSeq2Seq, AutomaticSpeechRecognitionPipeline, pipeline

from liteasr_hf import LiteWhisperASRPipeline, LiteWhisperForConditionalGeneration, save_lite_checkpoint
from modeling_utils import random_factors, tiny_audio, tiny_processor, tiny_whisper

RANKS = [{"q_proj": 4, "k_proj": 6, "v_proj": 5, "fc1": 10}, {"k_proj": 3, "out_proj": 8}]
GREEDY = {"max_new_tokens": 8, "num_beams": 1}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(lite model, processor, checkpoint folder, expected tokens, expected text) for one tiny lite model."""
    root = tmp_path_factory.mktemp("lite")
    dense = tiny_whisper()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, RANKS, random_factors(dense, RANKS))
    processor = tiny_processor(root / "tokenizer-src")
    folder = save_lite_checkpoint(lite, str(root / "checkpoint"), processor=processor)
    features = processor(tiny_audio(), sampling_rate=16_000, return_tensors="pt").input_features
    tokens = lite.generate(features, **GREEDY)
    text = processor.tokenizer.decode(tokens[0], skip_special_tokens=True)
    return lite, processor, folder, features, tokens, text


def test_checkpoint_is_self_contained(saved):
    _, _, folder, *_ = saved
    files = set(os.listdir(folder))
    code = {"configuration_lite_whisper.py", "modeling_lite_whisper.py", "attention_lite_whisper.py",
            "pipeline_lite_whisper.py"}
    assert code | {"config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"} <= files
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["model_type"] == "lite-whisper" and config["low_rank_config"] == RANKS
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSpeechSeq2Seq"}
    assert config["custom_pipelines"]["automatic-speech-recognition"]["impl"] == "pipeline_lite_whisper.LiteWhisperASRPipeline"
    generation = json.load(open(os.path.join(folder, "generation_config.json")))
    assert {"lang_to_id", "task_to_id", "no_timestamps_token_id", "is_multilingual"} <= set(generation)
    for name in code:  # flat: siblings by single-dot imports, nothing from the package
        source = open(os.path.join(folder, name)).read()
        assert not re.search(r"^\s*(from|import)\s+(liteasr_hf|\.\.)", source, re.M), name


def test_round_trip_with_package(saved):
    lite, processor, folder, features, tokens, text = saved
    for auto in (AutoModelForSpeechSeq2Seq, AutoModel):
        loaded = auto.from_pretrained(folder)
        assert type(loaded) is LiteWhisperForConditionalGeneration
        for key, value in lite.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert torch.equal(loaded.generate(features, **GREEDY), tokens)
    fast = AutoModel.from_pretrained(folder, attn_implementation="liteasr")
    assert torch.equal(fast.generate(features, **GREEDY), tokens)
    # pipeline() from the folder needs no trust_remote_code with the package installed, nor does a model object.
    asr = pipeline("automatic-speech-recognition", model=folder)
    assert isinstance(asr, LiteWhisperASRPipeline) and asr.type == "seq2seq_whisper"
    assert asr(tiny_audio(), generate_kwargs=GREEDY)["text"] == text
    asr = pipeline("automatic-speech-recognition", model=lite, tokenizer=processor.tokenizer,
                   feature_extractor=processor.feature_extractor)
    assert isinstance(asr, LiteWhisperASRPipeline) and asr(tiny_audio(), generate_kwargs=GREEDY)["text"] == text


def test_package_pipeline_leaves_other_models_on_the_stock_class(saved):
    """The package registers LiteWhisperASRPipeline for the task; any other model still gets the stock class itself."""
    _, processor, *_ = saved
    asr = pipeline("automatic-speech-recognition", model=tiny_whisper(), tokenizer=processor.tokenizer,
                   feature_extractor=processor.feature_extractor)
    assert type(asr) is AutomaticSpeechRecognitionPipeline and asr.type == "seq2seq_whisper"


FRESH_PROCESS = r"""
import json, sys
sys.modules["liteasr_hf"] = None  # an editable install would make it importable even in isolated mode
try:
    import liteasr_hf
except ImportError:
    pass
else:
    raise SystemExit("liteasr_hf is importable")
import importlib
import torch
from transformers import AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline
from transformers.pipelines import PIPELINE_REGISTRY
folder, features, audio = sys.argv[1], torch.load(sys.argv[2]), torch.load(sys.argv[3]).numpy()
greedy = {"max_new_tokens": 8, "num_beams": 1}
out = {}
for name, auto in (("seq2seq", AutoModelForSpeechSeq2Seq), ("auto", AutoModel)):
    model = auto.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    out[name] = model.generate(features, **greedy).tolist()
model = AutoModel.from_pretrained(folder, trust_remote_code=True, attn_implementation="liteasr")
out["liteasr"] = model.generate(features, **greedy).tolist()
out["pipeline"] = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)(
    audio, generate_kwargs=greedy)["text"]
processor = AutoProcessor.from_pretrained(folder)
# A model object, as transformers' Whisper examples pass it: pipeline() reads no config for it, so it takes the task's
# registry entry, which the checkpoint's code set to its pipeline class; any other model still gets the stock class.
lite_pipeline = importlib.import_module(type(model).__module__).LiteWhisperASRPipeline
assert PIPELINE_REGISTRY.supported_tasks["automatic-speech-recognition"]["impl"] is lite_pipeline
asr = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
               feature_extractor=processor.feature_extractor)
assert type(asr) is lite_pipeline
out["pipeline_object"] = asr(audio, generate_kwargs=greedy)["text"]
print("RESULT" + json.dumps(out))
"""


def test_fresh_process_without_package_trust_remote_code(saved, tmp_path):
    _, _, folder, features, tokens, text = saved
    torch.save(features, tmp_path / "features.pt")
    torch.save(torch.from_numpy(tiny_audio()), tmp_path / "audio.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    # -I: no cwd, PYTHONPATH or user site on sys.path; cwd is a scratch folder outside the repository.
    result = subprocess.run(
        [sys.executable, "-I", "-c", FRESH_PROCESS, folder, str(tmp_path / "features.pt"), str(tmp_path / "audio.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    for name in ("seq2seq", "auto", "liteasr"):
        assert out[name] == tokens.tolist(), name
    assert out["pipeline"] == text and out["pipeline_object"] == text


def published_layout(folder, out):
    """Rewrite a checkpoint as efficient-speech/lite-whisper-* ship it: auto_map with AutoConfig and AutoModel only,
    no custom pipeline, their two code files, no processor files, a generation config without Whisper's fields."""
    os.makedirs(out)
    config = json.load(open(os.path.join(folder, "config.json")))
    config["auto_map"] = {"AutoConfig": "configuration_lite_whisper.LiteWhisperConfig",
                          "AutoModel": "modeling_lite_whisper.LiteWhisperForConditionalGeneration"}
    del config["custom_pipelines"]
    json.dump(config, open(os.path.join(out, "config.json"), "w"))
    generation = json.load(open(os.path.join(folder, "generation_config.json")))
    generation = {k: v for k, v in generation.items() if k in ("bos_token_id", "decoder_start_token_id", "eos_token_id", "pad_token_id")}
    json.dump(generation, open(os.path.join(out, "generation_config.json"), "w"))
    for name in ("model.safetensors", "configuration_lite_whisper.py", "modeling_lite_whisper.py"):
        with open(os.path.join(folder, name), "rb") as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
    return str(out)


def test_published_layout_loads_through_package(saved, tmp_path):
    lite, processor, folder, features, tokens, text = saved
    published = published_layout(folder, tmp_path / "published")
    for auto in (AutoModel, AutoModelForSpeechSeq2Seq):
        model = auto.from_pretrained(published)
        assert type(model) is LiteWhisperForConditionalGeneration
    assert not hasattr(model.generation_config, "lang_to_id") or model.generation_config.lang_to_id is None
    # Loading completes a bare generation config from the vocabulary's layout (test_bare_published_generation_config_...
    # on a real one); the tiny vocabulary has none, so the saved model's generation config stands in.
    model.generation_config = copy.deepcopy(lite.generation_config)
    assert torch.equal(model.generate(features, **GREEDY), tokens)
    assert torch.equal(model.generate(features, language="en", task="transcribe", **GREEDY),
                       lite.generate(features, language="en", task="transcribe", **GREEDY))
    # Re-saving with the processor makes it self-contained.
    resaved = save_lite_checkpoint(model, str(tmp_path / "resaved"), processor=processor)
    asr = pipeline("automatic-speech-recognition", model=resaved)
    assert asr(tiny_audio(), generate_kwargs=GREEDY)["text"] == text


def corrupt(folder, out, edit_tensors=None, edit_config=None):
    os.makedirs(out)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    config = json.load(open(os.path.join(folder, "config.json")))
    edit_tensors and edit_tensors(tensors)
    edit_config and edit_config(config)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    json.dump(config, open(os.path.join(out, "config.json"), "w"))
    return str(out)


@pytest.mark.parametrize(
    "edit_tensors, edit_config, message",
    [
        (lambda t: t.pop("model.encoder.layers.0.self_attn.q_proj.weight2"), None,
         "missing tensor model.encoder.layers.0.self_attn.q_proj.weight2"),
        (lambda t: t.update({"model.encoder.layers.1.fc1.weight": torch.zeros(100, 64)}), None,
         "tensor model.encoder.layers.1.fc1.weight has shape (100, 64) but the config expects (128, 64)"),
        (None, lambda c: c["low_rank_config"][0].update(q_proj=5),
         "tensor model.encoder.layers.0.self_attn.q_proj.weight1 has shape (64, 4) but the config expects (64, 5)"),
        (None, lambda c: c["low_rank_config"][1].pop("out_proj"),
         "missing tensor model.encoder.layers.1.self_attn.out_proj.weight"),
    ],
)
def test_checkpoint_disagreeing_with_config_is_an_error(saved, tmp_path, edit_tensors, edit_config, message):
    folder = corrupt(saved[2], tmp_path / "bad", edit_tensors, edit_config)
    with pytest.raises(ValueError) as err:
        AutoModelForSpeechSeq2Seq.from_pretrained(folder)
    assert message in str(err.value)


@pytest.mark.parametrize("audio, message", [
    (np.zeros(0, np.float32), "audio is empty"),
    (np.full(16_000, np.nan, np.float32), "NaN or infinite"),
])
def test_pipeline_refuses_audio_it_would_transcribe_as_noise(saved, audio, message):
    # Stock Whisper turns empty audio into " . . . ." and NaN samples into "0"; a lite model says what is wrong.
    lite, processor, folder, features, tokens, text = saved
    asr = pipeline("automatic-speech-recognition", model=folder)
    with pytest.raises(ValueError, match=message):
        asr({"raw": audio, "sampling_rate": 16_000}, generate_kwargs=GREEDY)
    assert asr({"raw": tiny_audio(), "sampling_rate": 16_000}, generate_kwargs=GREEDY)["text"] == text


@pytest.mark.parametrize("name", ["bundled/whisper-tiny.en", "bundled/whisper-base"])
def test_special_token_layout_matches_the_real_tokenizer(name):
    """The ids the bare-config completion uses follow from the vocabulary size; checked against the real tiny.en and
    base tokenizer.json files (v3 adds one language: every task token one further on)."""
    from liteasr_hf.conversion import bundled
    from liteasr_hf.conversion.ctranslate2 import special_ids
    from liteasr_hf.lite_whisper.generation_config_lite_whisper import whisper_special_ids

    try:
        folder, _ = bundled._sources(name)
    except ModuleNotFoundError as e:
        pytest.skip(str(e))
    tok = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8"))
    real = special_ids(tok)
    ids = whisper_special_ids(51865 if name.endswith("base") else 51864)  # the models' embedding rows
    for key, token in (("eot", "<|endoftext|>"), ("sot", "<|startoftranscript|>"), ("translate", "<|translate|>"),
                       ("transcribe", "<|transcribe|>"), ("prev", "<|startofprev|>"), ("no_timestamps", "<|notimestamps|>")):
        assert ids[key] == real[token], token
    languages = {t: i for t, i in real.items() if ids["sot"] < i < ids["translate"]}
    assert sorted(ids["languages"].values()) == sorted(languages.values())
    if name.endswith("base"):  # the multilingual layout names them too (tiny.en's vocabulary says <|iw|> for <|he|>)
        assert ids["languages"] == languages
    assert whisper_special_ids(51866)["no_timestamps"] == 50364 and whisper_special_ids(1000) is None


@pytest.mark.slow
def test_bare_published_generation_config_generates_the_full_transcript(tiny_en_path, tmp_path):
    """A real tiny.en checkpoint laid out like the published uploads (auto_map for AutoConfig/AutoModel only, the
    generation config of GenerationConfig.from_model_config) transcribes all of an 11 s clip, takes
    return_timestamps=True, and its saved copy carries the English spelling normalizer."""
    from transformers import AutoProcessor, GenerationConfig, WhisperForConditionalGeneration

    from liteasr_hf.audio import BUNDLED_CLIPS, load_clips

    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    processor = AutoProcessor.from_pretrained(tiny_en_path)
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense)
    folder = save_lite_checkpoint(lite, str(tmp_path / "saved"), processor=processor)
    assert WhisperTokenizer_normalizer(folder)
    published = published_layout(folder, tmp_path / "published")
    GenerationConfig.from_model_config(LiteWhisperForConditionalGeneration.config_class.from_pretrained(published)).save_pretrained(published)
    clip = next(c for c in load_clips(BUNDLED_CLIPS, text_column=None) if c.id.startswith("jfk"))
    features = processor(clip.audio, sampling_rate=16_000, return_tensors="pt").input_features
    expected = dense.generate(features, num_beams=1)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(published).eval()
    assert model.generation_config.max_length == 448
    assert torch.equal(model.generate(features, num_beams=1), expected)  # before the fix: 20 tokens, cut mid-sentence
    stamped = [processor.decode(model.generate(features, return_timestamps=True, num_beams=1)[0].tolist(), decode_with_timestamps=True)]
    assert stamped[0].startswith("<|0.00|> And so my fellow Americans") and re.search(r"country\.<\|1\d\.\d\d\|>$", stamped[0])


def WhisperTokenizer_normalizer(folder):
    from transformers import WhisperTokenizer

    return WhisperTokenizer.from_pretrained(folder).english_spelling_normalizer
