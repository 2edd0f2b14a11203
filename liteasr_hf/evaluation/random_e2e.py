"""End-to-end speed at sizes with no real weights at hand: random weights of a model's exact shapes (large-v3,
large-v3-turbo, ...), real clips for their lengths (so the dynamic context picks the buckets real audio would), and a
fixed number of decoded tokens per clip (random weights decode noise; a fixed count makes every row do the same
decoder work). Speed only, never accuracy.

On CUDA, `CUDAGraphEncoder` replays one captured graph per (batch, context plan): the plan reads the audio's length
on the host (`LiteWhisperEncoder.context_plan`), and what follows (`encode`) has shapes fixed by it, so the buckets
bound the graphs to a few per batch size.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..generation import quiet_length_warning

# Whisper's shapes: d_model, encoder layers, decoder layers, attention heads, mel bins, vocabulary (also the encoder
# shapes of `liteasr-hf benchmark`)
RANDOM_SHAPES = {
    "tiny": (384, 4, 4, 6, 80, 51865),
    "base": (512, 6, 6, 8, 80, 51865),
    "small": (768, 12, 12, 12, 80, 51865),
    "medium": (1024, 24, 24, 16, 80, 51865),
    "large-v3": (1280, 32, 32, 20, 128, 51866),
    "large-v3-turbo": (1280, 32, 4, 20, 128, 51866),
}


def random_whisper(shape: str, device="cpu", dtype=torch.float32, seed: int = 0):
    """A WhisperForConditionalGeneration of `shape` with random weights and a complete Whisper generation config."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    from ..lite_whisper.generation_config_lite_whisper import complete_whisper_generation_config, whisper_special_ids

    if shape not in RANDOM_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(RANDOM_SHAPES)}")
    d, enc, dec, heads, mels, vocab = RANDOM_SHAPES[shape]
    ids = whisper_special_ids(vocab)
    config = WhisperConfig(vocab_size=vocab, num_mel_bins=mels, d_model=d, encoder_layers=enc, decoder_layers=dec,
                           encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d,
                           decoder_ffn_dim=4 * d, max_source_positions=1500, max_target_positions=448,
                           decoder_start_token_id=ids["sot"], eos_token_id=ids["eot"], pad_token_id=ids["eot"],
                           bos_token_id=ids["eot"], suppress_tokens=[], begin_suppress_tokens=[ids["eot"]])
    torch.manual_seed(seed)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config).to(dtype).eval()
    model.generation_config = GenerationConfig.from_model_config(config)
    complete_whisper_generation_config(model.generation_config, config)  # (warns once: it is what a bare config lacks)
    model.generation_config.language = "en" if model.generation_config.is_multilingual else None
    return model


def random_lite(dense, low_rank_config, seed: int = 1, attention: str = "liteasr"):
    """The lite model of `dense` with random factors at these ranks (shapes and speed only), its encoder attention in
    rank space where that pays (`attention="liteasr"`)."""
    from ..lite_whisper import LiteWhisperForConditionalGeneration
    from ..lite_whisper.configuration_lite_whisper import LOW_RANK_SHAPES, projection_path

    g = torch.Generator().manual_seed(seed)
    p = next(dense.parameters())
    factors = {}
    for i, layer in enumerate(low_rank_config):
        for name, k in layer.items():
            d_in, d_out = LOW_RANK_SHAPES[name](dense.config)
            factors[f"layers.{i}.{projection_path(name)}"] = tuple(
                (torch.randn(*s, generator=g) * 0.02).to(p.device, p.dtype) for s in ((d_in, k), (k, d_out), (d_out,)))
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, low_rank_config, factors).eval()
    if attention:
        lite.set_attn_implementation(attention)
    return lite


class CUDAGraphEncoder:
    """While entered (`with graphs:`), a lite encoder's forward replays graphs, one per (batch, context plan), captured
    on first use; off CUDA it runs `encode` as is."""

    def __init__(self, encoder):
        self.encoder, self.graphs, self._forward = encoder, {}, None

    def __enter__(self):
        self._forward = self.encoder.forward
        self.encoder.forward = self.forward
        return self

    def __exit__(self, *exc):
        self.encoder.forward = self._forward

    def forward(self, input_features, attention_mask=None, encoder_context=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        from ..lite_whisper.context_lite_whisper import fit_features

        plan = self.encoder.context_plan(input_features, attention_mask, encoder_context)
        x = fit_features(input_features, plan)
        if x.device.type != "cuda":
            return BaseModelOutput(last_hidden_state=self.encoder.encode(x, plan))
        key = (tuple(x.shape), x.dtype, plan)
        if key not in self.graphs:
            static = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():  # warm up off the default stream (autotunes the kernel)
                for _ in range(2):
                    self.encoder.encode(static, plan)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                out = self.encoder.encode(static, plan)
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        static.copy_(x)
        graph.replay()
        return BaseModelOutput(last_hidden_state=out.clone())  # the next replay overwrites `out`


def in_context(model, buckets, margin, run, graphs: CUDAGraphEncoder | None = None):
    """`run` (a callable(audios, encoder_context=None), as `fixed_tokens_runner` makes) with a lite model's encoder on
    these context buckets (None: the full window) and margin, the rest of its settings as its config has them: the
    settings are built once and passed to every call; optionally replaying `graphs`. A dense Whisper runs as it is."""
    import contextlib

    encoder = model.get_encoder()
    context = {}
    if getattr(encoder, "context_settings", None) is not None:
        context = {"encoder_context": encoder.context_settings().replace(buckets=buckets, margin=margin)}

    def wrapped(audios):
        with graphs if graphs is not None else contextlib.nullcontext():
            return run(audios, **context)

    return wrapped


def fixed_tokens_runner(model, feature_extractor, batch_size: int, tokens: int):
    """callable(audios, encoder_context=None) -> seconds: generate exactly `tokens` new tokens per clip (eos suppressed
    until then; no loop guard, which would decode every such row again), on `encoder_context` where given (a lite
    model's `ContextSettings` or `ContextPlan`)."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    lite = hasattr(model, "loop_guard")  # a lite model (its generate takes these)

    @torch.inference_mode()
    def run(audios, encoder_context=None):
        context = {"guard_loops": False} if lite else {}
        if encoder_context is not None:
            context["encoder_context"] = encoder_context
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]))  # similar lengths batch together
        sync()
        t0 = time.perf_counter()
        for start in range(0, len(order), batch_size):
            batch = [audios[i] for i in order[start : start + batch_size]]
            feats = feature_extractor(batch, sampling_rate=16_000, return_tensors="pt", return_attention_mask=True)
            with quiet_length_warning():
                model.generate(feats.input_features.to(device, dtype), attention_mask=feats.attention_mask.to(device),
                               min_new_tokens=tokens, max_new_tokens=tokens, num_beams=1, do_sample=False, **context)
        sync()
        return time.perf_counter() - t0

    return run


def run_random_rows(rows: dict, audios, rounds: int, warmup: bool = True) -> list[dict]:
    """rows: {label: callable(audios) -> seconds}, interleaved over `rounds` after one untimed round (first calls,
    CUDA graph captures); the first row is the reference. Returns per row: median wall seconds, speed-up."""
    walls = {label: [] for label in rows}
    for run in rows.values() if warmup else ():
        run(audios)
    for _ in range(rounds):
        for label, run in rows.items():
            walls[label].append(run(audios))
    ref = statistics.median(next(iter(walls.values())))
    return [{"row": label, "wall_s": statistics.median(w), "walls": w, "speedup": ref / statistics.median(w)}
            for label, w in walls.items()]
