"""CTranslate2 (faster-whisper) model folders -> Hugging Face `WhisperForConditionalGeneration` folders.

The binary layout is the one `ctranslate2/specs/model_spec.py` `_serialize` writes (binary version 6):
uint32 version, string spec name, uint32 revision, uint32 variable count, then per variable: string name,
uint8 rank, uint32 dims, uint8 dtype id, uint32 byte count, raw little-endian data; then uint32 alias count
and (alias, target) string pairs. A string is a uint16 length (NUL included), the bytes, a NUL.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO, Sequence

import numpy as np

BINARY_VERSION = 6
# Order of CT2's DataType enum (include/ctranslate2/types.h); bfloat16 is decoded by hand below.
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
# Flags whose value changes the computation: anything else would silently give a different model than HF's Whisper.
EXPECTED_FLAGS = {
    "pre_norm": 1, "activation": 3, "scale_embeddings": 0, "alibi": 0, "start_from_zero_embedding": 0,
    "alibi_use_positive_positions": 0, "scale_alibi": 0,
}
# Older converters don't write these; their absence means off.
FLAGS_DEFAULT_OFF = {"alibi", "start_from_zero_embedding", "alibi_use_positive_positions", "scale_alibi"}
# Scalars we read (num_heads) or knowingly ignore (CT2's alignment scalars are wrong in tiny.en; config.json wins).
KNOWN_SCALARS = {"num_heads", "alignment_heads", "alignment_layer"}
NORMALIZER_JSON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "english_normalizer.json")
N_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>


class CT2FormatError(ValueError):
    """A model.bin or model folder that is not a CTranslate2 Whisper model we can convert faithfully."""


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)


class _Concat(io.RawIOBase):
    """Reads several files as one stream, so split model.bin parts never need joining on disk or in memory."""

    def __init__(self, paths: Sequence[str]):
        self._files = [open(p, "rb") for p in paths]
        self._i = 0

    def readable(self):
        return True

    def readinto(self, buf):
        while self._i < len(self._files):
            n = self._files[self._i].readinto(buf)
            if n:
                return n
            self._i += 1
        return 0

    def close(self):
        for f in self._files:
            f.close()
        super().close()


class _Reader:
    def __init__(self, stream: BinaryIO, where: str):
        self.f, self.where, self.pos = stream, where, 0

    def bytes(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CT2FormatError(f"{self.where}: truncated at byte {self.pos + len(data)} while reading {what} (needed {n} bytes, got {len(data)})")
        self.pos += n
        return data

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.bytes(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.uint("H", what)
        raw = self.bytes(n, what)
        if n == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.where}: corrupt string for {what} at byte {self.pos - n} (not NUL-terminated)")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CT2FormatError(f"{self.where}: corrupt string for {what} at byte {self.pos - n} ({e})") from None


def read_ct2(path: str | Sequence[str]) -> CT2Model:
    """Read a CTranslate2 model.bin (a folder holding one, the file, or a list of parts to concatenate)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if len(paths) == 1 and os.path.isdir(paths[0]):
        paths = [os.path.join(paths[0], "model.bin")]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: no such CTranslate2 model file")
    where = paths[0] if len(paths) == 1 else " + ".join(paths)
    size = sum(os.path.getsize(p) for p in paths)
    with _Concat(paths) as raw:
        r = _Reader(io.BufferedReader(raw, 1 << 20), where)
        version = r.uint("I", "the binary version")
        if version != BINARY_VERSION:
            raise CT2FormatError(f"{where}: binary version {version}, only version {BINARY_VERSION} is supported (is this a CTranslate2 model.bin?)")
        spec = r.string("the spec name")
        revision = r.uint("I", "the spec revision")
        count = r.uint("I", "the variable count")
        variables = {}
        for i in range(count):
            name = r.string(f"variable #{i} name")
            rank = r.uint("B", f"{name} rank")
            shape = tuple(r.uint("I", f"{name} shape") for _ in range(rank))
            type_id = r.uint("B", f"{name} dtype")
            if type_id not in DTYPES:
                raise CT2FormatError(f"{where}: {name} has unknown dtype id {type_id}")
            nbytes = r.uint("I", f"{name} byte count")
            itemsize = 2 if DTYPES[type_id] == "bfloat16" else np.dtype(DTYPES[type_id]).itemsize
            if nbytes != itemsize * int(np.prod(shape)) or r.pos + nbytes > size:
                raise CT2FormatError(f"{where}: {name} claims {nbytes} bytes for shape {shape} (corrupt or truncated file)")
            variables[name] = _array(r.bytes(nbytes, name), DTYPES[type_id], shape)
        aliases = {}
        for i in range(r.uint("I", "the alias count")):
            alias = r.string(f"alias #{i}")
            aliases[alias] = r.string(f"alias #{i} target")
        if r.f.read(1):
            raise CT2FormatError(f"{where}: unexpected data after the last alias at byte {r.pos} (corrupt file?)")
    return CT2Model(spec, revision, variables, aliases)


def _array(data: bytes, dtype, shape) -> np.ndarray:
    if dtype == "bfloat16":  # numpy has no bfloat16: it is the top half of a float32
        return (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return np.frombuffer(data, dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------- weights


def _check_flags(model: CT2Model) -> None:
    for name, value in model.variables.items():
        if value.ndim or name.endswith("_scale"):  # int16 weights have a scalar scale
            continue
        key = name.rsplit("/", 1)[-1]
        if key in EXPECTED_FLAGS:
            if int(value) != EXPECTED_FLAGS[key]:
                raise CT2FormatError(f"{name} = {int(value)}: only {EXPECTED_FLAGS[key]} is supported by Hugging Face Whisper")
        elif key not in KNOWN_SCALARS:
            raise CT2FormatError(f"unknown flag {name} = {value.item()}: refusing to convert a model we may not reproduce")
    for key, want in EXPECTED_FLAGS.items():
        if f"decoder/{key}" not in model.variables and key not in FLAGS_DEFAULT_OFF:
            raise CT2FormatError(f"decoder/{key} is missing: cannot tell whether the model matches Whisper ({key} must be {want})")


def _num_layers(names, prefix: str) -> int:
    # `layer_(\d+)/`, not a split on "layer_": `encoder/layer_norm` would count as a layer.
    ids = {int(m.group(1)) for n in names if (m := re.match(rf"{prefix}/layer_(\d+)/", n))}
    if ids != set(range(len(ids))):
        raise CT2FormatError(f"{prefix}: layer numbers are not contiguous: {sorted(ids)}")
    return len(ids)


class _Weights:
    """Pops CT2 tensors as float32 (dequantizing int8/int16 with their `_scale`) so leftovers can be reported."""

    def __init__(self, model: CT2Model):
        self.vars = {k: v for k, v in model.variables.items() if v.ndim or k.endswith("_scale")}

    def take(self, name: str) -> np.ndarray:
        if name not in self.vars:
            raise CT2FormatError(f"missing tensor {name}")
        value = self.vars.pop(name)
        scale = self.vars.pop(name + "_scale", None)
        if scale is not None:  # CT2 stores round(w * scale), scale per output row (int8) or a scalar (int16)
            value = value.astype(np.float32) / scale.astype(np.float32).reshape((-1,) + (1,) * (value.ndim - 1))
        return np.array(value, dtype=np.float32)  # a writable copy: torch refuses read-only buffers


def _attention(w: _Weights, out: dict, src: str, dst: str, d: int, fused: str) -> None:
    """Self-attention (`fused="qkv"`: linear_0 = [q;k;v]) or cross-attention (`"kv"`: linear_1 = [k;v])."""
    if fused == "qkv":
        weights, biases = np.split(w.take(f"{src}/linear_0/weight"), 3), np.split(w.take(f"{src}/linear_0/bias"), 3)
        out_linear = "linear_1"
    else:
        weights = [w.take(f"{src}/linear_0/weight"), *np.split(w.take(f"{src}/linear_1/weight"), 2)]
        biases = [w.take(f"{src}/linear_0/bias"), *np.split(w.take(f"{src}/linear_1/bias"), 2)]
        out_linear = "linear_2"
    for n, weight, bias in zip("qkv", weights, biases):
        if weight.shape != (d, d):
            raise CT2FormatError(f"{src}: {n} projection has shape {weight.shape}, expected {(d, d)}")
        out[f"{dst}.{n}_proj.weight"] = weight
        if n == "k":  # HF's k_proj has no bias; CT2 stores zeros there
            if np.abs(bias).max() > 0:
                raise CT2FormatError(f"{src}: the key bias is not zero, HF Whisper has no key bias")
        else:
            out[f"{dst}.{n}_proj.bias"] = bias
    out[f"{dst}.out_proj.weight"] = w.take(f"{src}/{out_linear}/weight")
    out[f"{dst}.out_proj.bias"] = w.take(f"{src}/{out_linear}/bias")


def _norm(w: _Weights, out: dict, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = w.take(f"{src}/gamma")
    out[f"{dst}.bias"] = w.take(f"{src}/beta")


def _linear(w: _Weights, out: dict, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = w.take(f"{src}/weight")
    out[f"{dst}.bias"] = w.take(f"{src}/bias")


def ct2_state_dict(model: CT2Model) -> tuple[dict[str, np.ndarray], dict]:
    """HF Whisper state dict (float32) and its dimensions from a CT2 WhisperSpec model."""
    if model.spec != "WhisperSpec":
        raise CT2FormatError(f"spec {model.spec!r} is not a Whisper model (expected 'WhisperSpec')")
    _check_flags(model)
    for alias, target in model.aliases.items():
        if alias != "decoder/projection/weight" or target != "decoder/embeddings/weight":
            raise CT2FormatError(f"unexpected alias {alias} -> {target} (only the tied output projection is supported)")
    names, v = list(model.variables), model.variables
    dims = {
        "encoder_layers": _num_layers(names, "encoder"),
        "decoder_layers": _num_layers(names, "decoder"),
        "encoder_attention_heads": int(v["encoder/num_heads"]) if "encoder/num_heads" in v else None,
        "decoder_attention_heads": int(v["decoder/num_heads"]) if "decoder/num_heads" in v else None,
    }
    if None in dims.values():
        raise CT2FormatError("encoder/num_heads or decoder/num_heads is missing")
    w, out = _Weights(model), {}
    for side in ("encoder", "decoder"):
        out[f"model.{side}.embed_positions.weight"] = w.take(f"{side}/position_encodings/encodings")
        _norm(w, out, f"{side}/layer_norm", f"model.{side}.layer_norm")
    for conv in ("conv1", "conv2"):
        _linear(w, out, f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.decoder.embed_tokens.weight"] = w.take("decoder/embeddings/weight")
    if "decoder/projection/weight" in w.vars:  # untied copy: must equal the embeddings, HF ties them
        if not np.allclose(w.take("decoder/projection/weight"), out["model.decoder.embed_tokens.weight"]):
            raise CT2FormatError("decoder/projection/weight differs from the embeddings: HF Whisper ties them")
    d = out["model.decoder.embed_tokens.weight"].shape[1]
    for side, n in (("encoder", dims["encoder_layers"]), ("decoder", dims["decoder_layers"])):
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            _attention(w, out, f"{src}/self_attention", f"{dst}.self_attn", d, "qkv")
            _norm(w, out, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                _attention(w, out, f"{src}/attention", f"{dst}.encoder_attn", d, "kv")
                _norm(w, out, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            _linear(w, out, f"{src}/ffn/linear_0", f"{dst}.fc1")
            _linear(w, out, f"{src}/ffn/linear_1", f"{dst}.fc2")
            _norm(w, out, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    if w.vars:
        raise CT2FormatError(f"tensors not understood (a Whisper variant we don't support?): {', '.join(sorted(w.vars)[:8])}")
    dims.update(
        d_model=d,
        vocab_size=out["model.decoder.embed_tokens.weight"].shape[0],
        num_mel_bins=out["model.encoder.conv1.weight"].shape[1],
        encoder_ffn_dim=out["model.encoder.layers.0.fc1.weight"].shape[0] if dims["encoder_layers"] else 4 * d,
        decoder_ffn_dim=out["model.decoder.layers.0.fc1.weight"].shape[0] if dims["decoder_layers"] else 4 * d,
        max_source_positions=out["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=out["model.decoder.embed_positions.weight"].shape[0],
    )
    return out, dims


# ---------------------------------------------------------------------------------------------- tokenizer


def _load_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing ({what})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CT2FormatError(f"{path}: not valid JSON ({e})") from None


def fix_tokenizer_json(tok: dict, vocab_size: int) -> dict:
    """Append the 1501 timestamp tokens older tokenizer.json files lack, and check ids line up with the embeddings."""
    added = sorted(tok.get("added_tokens", []), key=lambda t: t["id"])
    contents = [t["content"] for t in added]
    if "<|notimestamps|>" not in contents:
        raise CT2FormatError("tokenizer.json has no <|notimestamps|> token: not a Whisper tokenizer")
    if "<|0.00|>" not in contents:
        if contents[-1] != "<|notimestamps|>":
            raise CT2FormatError(f"tokenizer.json: the last added token is {contents[-1]}, expected <|notimestamps|>")
        first = added[-1]["id"] + 1
        added += [
            {"id": first + i, "content": f"<|{i * 0.02:.2f}|>", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": False}
            for i in range(N_TIMESTAMPS)
        ]
    size = max(len(tok["model"]["vocab"]), added[-1]["id"] + 1)
    if size != vocab_size:
        raise CT2FormatError(f"tokenizer.json has {size} tokens but the model's embeddings have {vocab_size} rows")
    return {**tok, "added_tokens": added}


TIMESTAMP = re.compile(r"<\|\d+\.\d+\|>")


def special_ids(tok: dict) -> dict[str, int]:
    """Special tokens by name; timestamps excluded (some tokenizer.json files mark them special)."""
    return {t["content"]: t["id"] for t in tok["added_tokens"] if t.get("special") and not TIMESTAMP.fullmatch(t["content"])}


def tokenizer_config(tok: dict) -> dict:
    specials = sorted(((i, c) for c, i in special_ids(tok).items()), key=lambda x: x[0])
    if specials[-1][1] != "<|notimestamps|>":  # WhisperTokenizer takes timestamps to start after the last special
        raise CT2FormatError(f"tokenizer.json: the last special token is {specials[-1][1]}, expected <|notimestamps|>")
    decoder = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")} for t in tok["added_tokens"]}
    return {
        "tokenizer_class": "WhisperTokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": 448,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": [c for _, c in specials if c != "<|endoftext|>"],
        "added_tokens_decoder": decoder,
    }


# ---------------------------------------------------------------------------------------------- configs


def whisper_configs(dims: dict, tok: dict, ct2_config: dict):
    """WhisperConfig + GenerationConfig from the model's dimensions, its tokens, and the CT2 config.json."""
    from transformers import GenerationConfig, WhisperConfig

    ids = special_ids(tok)
    need = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startofprev|>", "<|notimestamps|>"]
    if missing := [t for t in need if t not in ids]:
        raise CT2FormatError(f"tokenizer.json lacks the Whisper special tokens {', '.join(missing)}")
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    multilingual = dims["vocab_size"] >= 51865  # the .en vocabularies have 51864 tokens
    # Language tokens sit between <|startoftranscript|> and <|translate|>; CT2's lang_ids can be shifted (tiny.en).
    lang_to_id = {c: i for c, i in ids.items() if sot < i < ids["<|translate|>"]}
    heads = ct2_config.get("alignment_heads") or [  # CT2's own default: all heads of the second half of the layers
        [l, h] for l in range(dims["decoder_layers"] // 2, dims["decoder_layers"]) for h in range(dims["decoder_attention_heads"])
    ]
    tokens = dict(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot)
    # Both configs carry the suppress lists: when they differ, transformers warns on every generate call.
    suppress = dict(
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
    )
    config = WhisperConfig(**dims, **tokens, **suppress, tie_word_embeddings=True, dtype="float32")
    gen = GenerationConfig(
        **tokens,
        **suppress,
        max_length=448,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        is_multilingual=multilingual,
        alignment_heads=[list(map(int, h)) for h in heads],
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    if multilingual:
        gen.lang_to_id = lang_to_id
        gen.task = "transcribe"  # without a task token multilingual generation degenerates
    return config, gen


# ---------------------------------------------------------------------------------------------- converter


def convert_ct2(src_dir: str, dst_dir: str, *, model_bin: str | Sequence[str] | None = None, overwrite: bool = False) -> str:
    """Convert a faster-whisper (CTranslate2) folder into a HF `WhisperForConditionalGeneration` folder.

    `model_bin` overrides `src_dir/model.bin` (e.g. the parts of a split file, read as one stream). The folder
    is written next to `dst_dir` and renamed into place, so an interrupted run never leaves a half folder.
    Returns `dst_dir`.
    """
    dst_dir = os.path.abspath(dst_dir)
    if os.path.exists(dst_dir) and os.listdir(dst_dir) and not overwrite:
        raise FileExistsError(f"{dst_dir}: already exists and is not empty (pass overwrite=True / --overwrite)")
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    ct2_config = _load_json(os.path.join(src_dir, "config.json"), "CTranslate2 config.json")
    tok = _load_json(os.path.join(src_dir, "tokenizer.json"), "the Whisper tokenizer.json")
    state, dims = ct2_state_dict(read_ct2(model_bin or src_dir))
    tok = fix_tokenizer_json(tok, dims["vocab_size"])
    config, gen = whisper_configs(dims, tok, ct2_config)

    parent = os.path.dirname(dst_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(dst_dir) + "-", dir=parent)
    try:
        save_file({k: torch.from_numpy(v) for k, v in state.items()}, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        del state
        config.save_pretrained(tmp)
        gen.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False)
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer_config(tok), f, indent=2, ensure_ascii=False)
        shutil.copyfile(NORMALIZER_JSON, os.path.join(tmp, "normalizer.json"))  # v5 save_pretrained won't write it
        WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(tmp)
        _check_processor(tmp)
        # mkdtemp (and safetensors) make private files; a model cache is ordinary readable data.
        os.chmod(tmp, 0o755)
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o644)
        if overwrite and os.path.exists(dst_dir):
            shutil.rmtree(dst_dir)
        try:
            os.replace(tmp, dst_dir)  # atomic; fails if another process filled dst_dir meanwhile
        except OSError as e:
            raise FileExistsError(f"{dst_dir}: appeared while converting ({e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst_dir


def _check_processor(folder: str) -> None:
    """Load the tokenizer back: timestamps must start right after <|notimestamps|> and text must round-trip."""
    from transformers import WhisperProcessor

    tok = WhisperProcessor.from_pretrained(folder).tokenizer
    nots = tok.convert_tokens_to_ids("<|notimestamps|>")
    if tok.all_special_ids[-1] != nots or tok.convert_tokens_to_ids("<|0.00|>") != nots + 1:
        raise CT2FormatError(f"{folder}: tokenizer special tokens are out of order (timestamps must follow <|notimestamps|>)")
    ids = tok(" ask not", add_special_tokens=False).input_ids
    if tok.decode(ids) != " ask not" or tok.english_spelling_normalizer is None:
        raise CT2FormatError(f"{folder}: the written tokenizer does not round-trip text")
