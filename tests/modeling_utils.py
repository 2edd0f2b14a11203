"""Tiny random Whisper models, exact factors and a minimal processor for the model tests (CPU, no network)."""

import json
import os

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from liteasr_hf.lite_whisper.configuration_lite_whisper import LOW_RANK_SHAPES, projection_path

# 256 byte tokens, then Whisper's special tokens, then a few timestamp tokens.
SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
] + [f"<|{i * 0.02:.2f}|>" for i in range(8)]
IDS = {tok: 256 + i for i, tok in enumerate(SPECIALS)}
VOCAB_SIZE = 256 + len(SPECIALS)
CHUNK_SECONDS = 1  # feature extractor window: 100 mel frames -> 50 encoder positions
SAMPLING_RATE = 16_000


def tiny_config(**overrides) -> WhisperConfig:
    """The tests' one tiny Whisper shape (1 s windows, byte vocabulary); overrides give the other sizes they need."""
    kwargs = dict(
        vocab_size=VOCAB_SIZE, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=50, max_target_positions=32,
        decoder_start_token_id=IDS["<|startoftranscript|>"], bos_token_id=IDS["<|endoftext|>"],
        eos_token_id=IDS["<|endoftext|>"], pad_token_id=IDS["<|endoftext|>"], begin_suppress_tokens=None,
    )
    kwargs.update(overrides)
    return WhisperConfig(**kwargs)


def tiny_generation_config() -> GenerationConfig:
    return GenerationConfig(
        decoder_start_token_id=IDS["<|startoftranscript|>"], bos_token_id=IDS["<|endoftext|>"],
        eos_token_id=IDS["<|endoftext|>"], pad_token_id=IDS["<|endoftext|>"],
        is_multilingual=True, lang_to_id={"<|en|>": IDS["<|en|>"], "<|fr|>": IDS["<|fr|>"]},
        task_to_id={"transcribe": IDS["<|transcribe|>"], "translate": IDS["<|translate|>"]},
        no_timestamps_token_id=IDS["<|notimestamps|>"], prev_sot_token_id=IDS["<|startofprev|>"],
        max_initial_timestamp_index=5, max_length=32, suppress_tokens=[], begin_suppress_tokens=None,
        forced_decoder_ids=None,
    )


# The real English vocabulary's layout (51864 tokens), for tests of CTranslate2 conversion and special ids.
REAL_EN_VOCAB = dict(vocab_size=51864, max_source_positions=1500, max_target_positions=448, decoder_start_token_id=50257,
                     bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)


def tiny_whisper(seed=0, dtype=torch.float32, **overrides) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(tiny_config(**overrides)).to(dtype).eval()
    # Random weights at init scale decode nothing but <|endoftext|>; larger ones give varied tokens to compare.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.generation_config = tiny_generation_config()
    return model


def module_name(layer, name):
    return f"layers.{layer}.{projection_path(name)}"


def exact_factors(model, low_rank_config):
    """weight1 [in, k], weight2 [k, out], bias [out] with weight1 @ weight2 == W^T exactly (k = min(in, out))."""
    encoder = model.model.encoder
    factors = {}
    for i, layer in enumerate(low_rank_config):
        for name in layer:
            linear = encoder.get_submodule(module_name(i, name))
            w = linear.weight.detach()  # [out, in]
            d_out, d_in = w.shape
            bias = linear.bias.detach() if linear.bias is not None else torch.zeros(d_out, dtype=w.dtype)
            if d_in <= d_out:
                factors[module_name(i, name)] = (torch.eye(d_in, dtype=w.dtype), w.T.clone(), bias.clone())
            else:
                factors[module_name(i, name)] = (w.T.clone(), torch.eye(d_out, dtype=w.dtype), bias.clone())
    return factors


def random_factors(model, low_rank_config, seed=1, scale=0.2):
    gen = torch.Generator().manual_seed(seed)
    config = model.config
    factors = {}
    for i, layer in enumerate(low_rank_config):
        for name, rank in layer.items():
            d_in, d_out = LOW_RANK_SHAPES[name](config)
            dtype = next(model.parameters()).dtype
            factors[module_name(i, name)] = tuple(
                torch.randn(*shape, generator=gen, dtype=torch.float64).mul(s).to(dtype)
                for shape, s in (((d_in, rank), scale), ((rank, d_out), scale), ((d_out,), scale))
            )
    return factors


def full_ranks(config, names=tuple(LOW_RANK_SHAPES)):
    return [{n: min(LOW_RANK_SHAPES[n](config)) for n in names} for _ in range(config.encoder_layers)]


def tiny_processor(out_dir) -> WhisperProcessor:
    """A byte-level Whisper tokenizer over the tiny vocabulary (no merges) and a 1-second feature extractor."""
    os.makedirs(out_dir, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = WhisperTokenizer(
        os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt"),
        unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in IDS.items()), "tiny vocabulary out of order"
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=CHUNK_SECONDS, sampling_rate=SAMPLING_RATE)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def tiny_audio(seed=0, seconds=0.8):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(int(seconds * SAMPLING_RATE), generator=gen) * 0.1).numpy()


# Log-mel tests that skip the feature extractor: 16 mel bins, 120 mel frames (60 encoder frames, 1.2 s).
SMALL_MELS = dict(num_mel_bins=16, max_source_positions=60, encoder_ffn_dim=256)


def tiny_features(n=6, seed=1):
    """(log-mels [n, 16, 120], real-audio encoder frames [n]): random frames, then a constant "padding" tail."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 16, 120, generator=g)
    real = torch.randint(10, 40, (n,), generator=g)
    feats[:, :, 1:][torch.arange(120 - 1)[None, None, :].expand(n, 16, -1) >= 2 * real[:, None, None]] = -1.0
    return feats, real


# ---- dynamic encoder context (test_context.py, test_padding_stride.py) ----------------------------------------------

CONTEXT_RANKS = [{"q_proj": 4, "k_proj": 6, "v_proj": 5, "fc1": 10}, {"k_proj": 3, "out_proj": 8}]


def lite_model(buckets=None, margin=0.1):
    """(tiny dense Whisper, its lite model at CONTEXT_RANKS with random factors and these context buckets / margin)."""
    from liteasr_hf import LiteWhisperForConditionalGeneration

    dense = tiny_whisper()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, CONTEXT_RANKS, random_factors(dense, CONTEXT_RANKS))
    lite.config.encoder_context_buckets, lite.config.encoder_context_margin = buckets, margin
    return dense, lite


def features(processor, seconds):
    """Feature-extractor output for clips of these lengths, padded to the 1 s window, with its attention mask."""
    audios = [tiny_audio(seed=i, seconds=s) for i, s in enumerate(seconds)]
    return processor.feature_extractor(audios, sampling_rate=SAMPLING_RATE, return_tensors="pt",
                                       return_attention_mask=True)


def shipped(prefix):
    """The bundled clips whose id starts with `prefix`."""
    from liteasr_hf.audio import BUNDLED_CLIPS, load_clips

    return [c for c in load_clips(BUNDLED_CLIPS, text_column=None) if c.id.startswith(prefix)]


def lite_and_dense_pipelines(lite, dense, processor):
    """ASR pipelines over `lite` and `dense` with one processor, and the list to which each call of the lite
    encoder's first layer appends the positions it saw: (lite pipeline, dense pipeline, positions)."""
    from transformers import pipeline

    make = lambda model: pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                                  feature_extractor=processor.feature_extractor)
    seen = []
    lite.get_encoder().layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    return make(lite), make(dense), seen


# The loop guard is off here: at 2 new tokens every row runs into the limit and would be decoded again on the full
# window (an extra 50-position run); these runs count the positions of the context asked for.
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
gen = {"max_new_tokens": 2, "language": "en", "guard_loops": False}
asr(audio, generate_kwargs=gen)
asr(audio, generate_kwargs=dict(gen, encoder_context_buckets=None))
print("RESULT" + json.dumps(seen))
"""


def positions_in_fresh_process(lite, processor, tmp_path):
    """Save `lite`, load the folder in a fresh process without the package (trust_remote_code alone), run a 0.25 s
    clip through its pipeline twice (config context, then encoder_context_buckets=None): the positions encoder
    layer 0 saw each time."""
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
