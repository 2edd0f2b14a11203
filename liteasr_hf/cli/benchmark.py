"""Encoder latency, dense Whisper vs LiteASR low-rank, plus the attention core: kernel vs SDPA.

Both sides run in the same process, on the same device, in the same dtype and the same execution mode
(eager / CUDA graph / torch.compile / torch.compile + CUDA graphs). Weights are RANDOM (model shapes
only): these are speed numbers, never accuracy numbers. Model shapes are hardcoded Whisper configs
(no Hub access needed).

Rows per (model, mode, batch):
  dense      WhisperEncoder, attn_implementation="sdpa"
  lite       LiteWhisperEncoder, attn_implementation="liteasr" (rank-space attention; Triton kernel on CUDA)
  lite-sdpa  LiteWhisperEncoder, attn_implementation="sdpa" (low-rank linears only, "naive low-rank")
  dense-contig  LiteWhisperEncoder with no low-rank layer: stock attention and weights, but the residual stream made
             contiguous as the lite layers do (transformers keeps it channels-first): the part of the speed-up that
             is not compression
ratio = dense ms / row ms (> 1: faster than dense).

Attention core rows (B x H x T, default 8 x 20 x 1500 on GPU): SDPA on dense per-head operands
(head_dim = d_model / heads, the baseline), SDPA on rank-space operands, and ``attention_core``
(the Triton kernel on CUDA; the PyTorch reference elsewhere) with rank-space k and v shared by heads,
and with rank-space k but per-head v; both with the per-key bias, as in the encoder (q is low-rank).

Examples:
  # CPU smoke run (CI): tiny shapes, short input, eager only
  liteasr-hf benchmark
  # H100, large-v3 (about 2 minutes; torch.compile compiles one graph per layer shape)
  liteasr-hf benchmark --device cuda --model large-v3 --dtype fp16 --batch 1 8 \\
      --modes eager cuda-graph compile --json outputs/benchmark_h100.json

In a checkout, `python scripts/benchmark.py ...` runs the same command (with the package installed: `pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from ..evaluation.random_e2e import RANDOM_SHAPES
from ..lite_whisper.configuration_lite_whisper import ATTENTION_PROJECTIONS, LOW_RANK_SHAPES
from .options import DTYPES, torch_dtype

PROJECTIONS = tuple(LOW_RANK_SHAPES)
MODES = ("eager", "cuda-graph", "compile", "compile-cudagraphs")


def round16(x):
    return max(16, int(round(x / 16.0)) * 16)


# ---------------------------------------------------------------------------------------------------------------
# Configs and rank profiles


def whisper_config(name, frames):
    from transformers import WhisperConfig

    d, layers, _, heads, mels, _ = RANDOM_SHAPES[name]
    return WhisperConfig(
        d_model=d, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=4 * d,
        decoder_layers=1, decoder_attention_heads=heads, decoder_ffn_dim=4 * d,
        num_mel_bins=mels, max_source_positions=frames // 2,
    )


def rank_profile(spec, config):
    """low_rank_config for `config` from "c-like", "fraction:F" or a lite checkpoint's config.json / folder."""
    d, layers = config.d_model, config.encoder_layers
    if spec == "c-like":
        # The paper's configuration (c) on large-v3 (d=1280): q/k/v/out rank 304, fc1/fc2 rank 480;
        # scaled with d_model for other sizes, rounded to multiples of 16.
        attn, fc = round16(304 * d / 1280), round16(480 * d / 1280)
        return [{n: attn if n in ATTENTION_PROJECTIONS else fc for n in PROJECTIONS} for _ in range(layers)]
    if "=" in spec:  # the same ranks in every layer, e.g. "q_proj=32,k_proj=32,fc1=480"
        try:
            ranks = {name.strip(): int(rank) for name, rank in (item.split("=") for item in spec.split(","))}
        except ValueError:
            raise ValueError(f"--ranks: expected NAME=RANK pairs separated by commas, got {spec!r}")
        unknown = set(ranks) - set(PROJECTIONS)
        if unknown:
            raise ValueError(f"--ranks: unknown projection(s) {sorted(unknown)}; known: {', '.join(PROJECTIONS)}")
        return [dict(ranks) for _ in range(layers)]
    if spec.startswith("fraction:"):
        f = float(spec.split(":", 1)[1])
        if not 0 < f < 1:
            raise ValueError(f"--ranks fraction must be in (0, 1), got {f}")
        sizes = {n: min(LOW_RANK_SHAPES[n](config)) for n in PROJECTIONS}  # full rank
        return [{n: min(s, round16(f * s)) for n, s in sizes.items()} for _ in range(layers)]
    return lite_config(spec)["low_rank_config"]


def lite_config(spec):
    """The config.json dict of the lite checkpoint (folder or file) that --ranks names."""
    path = os.path.join(spec, "config.json") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
        raise ValueError(f"--ranks: expected 'c-like', 'fraction:F', NAME=RANK pairs or a lite checkpoint folder/config.json, got {spec!r}")
    with open(path) as f:
        cfg = json.load(f)
    if "low_rank_config" not in cfg:
        raise ValueError(f"{path} has no low_rank_config (not a lite checkpoint config)")
    return cfg


def checkpoint_config(spec, frames):
    """A WhisperConfig with a lite checkpoint's own dims, when --ranks names one."""
    from transformers import WhisperConfig

    cfg = lite_config(spec)
    keep = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins", "activation_function")
    return WhisperConfig(**{k: cfg[k] for k in keep if k in cfg}, decoder_layers=1, max_source_positions=frames // 2)


def param_count(module):
    return sum(p.numel() for p in module.parameters())


def build_encoders(config, low_rank_config, device, dtype, variants):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    import liteasr_hf  # noqa: F401  (registers attn_implementation="liteasr")
    from liteasr_hf.lite_whisper.configuration_lite_whisper import LiteWhisperConfig
    from liteasr_hf.lite_whisper.modeling_lite_whisper import LiteWhisperEncoder

    encoders = {}
    torch.manual_seed(0)
    for variant in variants:
        if variant == "dense":
            cfg = type(config).from_dict(config.to_dict())
            cfg._attn_implementation = "sdpa"
            cls = WhisperEncoder
        else:
            ranks = [{} for _ in low_rank_config] if variant == "dense-contig" else low_rank_config
            cfg = LiteWhisperConfig(**{k: v for k, v in config.to_dict().items() if k != "model_type"},
                                    low_rank_config=ranks)
            cfg._attn_implementation = "liteasr" if variant == "lite" else "sdpa"
            cls = LiteWhisperEncoder
        with torch.device(device):
            enc = cls(cfg)
        encoders[variant] = enc.to(dtype=dtype).eval().requires_grad_(False)
    return encoders


# ---------------------------------------------------------------------------------------------------------------
# Timing


def time_fn(fn, device, warmup, iters):
    """Median milliseconds per call: CUDA events around each call on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def runner(encoder, x, mode, device):
    """A zero-argument callable running encoder(x) in the given execution mode (built and warmed here)."""
    forward = lambda inp: encoder(inp).last_hidden_state  # noqa: E731
    if mode == "eager":
        return lambda: forward(x)
    if mode in ("compile", "compile-cudagraphs"):
        # Regional compilation (PyTorch's recipe for repeated blocks): each encoder layer is compiled in place, and
        # layers of the same shapes share one graph, so a 32-layer encoder compiles in seconds instead of minutes.
        # The convolutional stem and the final layer norm stay eager (on both sides alike).
        torch._dynamo.reset()
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)  # per-layer ranks
        for layer in encoder.layers:
            layer.compile(mode="reduce-overhead" if mode == "compile-cudagraphs" else None, dynamic=False)
        for _ in range(3):  # compile, then (reduce-overhead) record the graphs
            forward(x)
        return lambda: forward(x)
    if mode == "cuda-graph":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up off the default stream (also autotunes the kernel)
            for _ in range(3):
                forward(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            forward(x)
        return graph.replay
    raise ValueError(mode)


def encoder_variants(args):
    return ["dense", "lite"] + (["lite-sdpa", "dense-contig"] if args.naive else [])


def bench_encoders(args, device, dtype, config, low_rank_config, model_name):
    rows = []
    variants = encoder_variants(args)
    encoders = build_encoders(config, low_rank_config, device, dtype, variants)
    dense_params = param_count(encoders["dense"])
    frames = 2 * config.max_source_positions
    for mode in args.modes:
        if mode in ("cuda-graph", "compile-cudagraphs") and device.type != "cuda":
            print(f"# skipping mode {mode}: CUDA only", file=sys.stderr)
            continue
        for batch in args.batch:
            x = torch.randn(batch, config.num_mel_bins, frames, device=device, dtype=dtype)
            dense_ms = None
            for variant in variants:
                with torch.inference_mode():
                    fn = runner(encoders[variant], x, mode, device)
                    ms = time_fn(fn, device, args.warmup, args.iters)
                del fn
                dense_ms = ms if variant == "dense" else dense_ms
                rows.append(dict(
                    model=model_name, mode=mode, batch=batch, dtype=args.dtype, variant=variant,
                    ms=round(ms, 4), ratio=round(dense_ms / ms, 4),
                    params_fraction=round(param_count(encoders[variant]) / dense_params, 4),
                ))
                print(f"# {model_name} {mode} b{batch} {variant}: {ms:.3f} ms", file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# Kernel (CUDA) or op (CPU) names -> where encoder time goes, first match wins. On an H100: cuDNN's SDPA kernel has
# "flash" (and "fprop") in its name, the conv stem's "fprop_implicit_gemm" and layout transforms, cuBLAS GEMMs "nvjet".
CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "_attn_fwd")),
    ("conv", ("conv", "fprop", "nchwtonhwc")),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
)


def category(name):
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


def profile_encoder(encoder, x, device, iters=3):
    """Milliseconds per forward by category (attention / gemm / conv / other) and the top kernels, from the
    profiler's device-side kernel times on CUDA (self CPU time of the ops on CPU). Eager mode."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    forward = lambda: encoder(x).last_hidden_state  # noqa: E731
    with torch.inference_mode():
        forward()
        activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
        with profile(activities=activities) as prof:
            for _ in range(iters):
                forward()
            if cuda:
                torch.cuda.synchronize()
    totals, kernels = {}, []
    for event in prof.key_averages():
        if cuda and event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if not cuda and not event.key.startswith("aten::"):
            continue  # CPU: aten ops' self times (exclusive, so nothing is counted twice)
        us = (event.self_device_time_total if cuda else event.self_cpu_time_total) / iters
        totals[category(event.key)] = totals.get(category(event.key), 0.0) + us / 1e3
        kernels.append((us / 1e3, event.count // iters, category(event.key), event.key[:90]))
    kernels.sort(reverse=True)
    return {k: round(v, 4) for k, v in sorted(totals.items())}, [
        dict(ms=round(ms, 4), calls=calls, category=cat, name=name) for ms, calls, cat, name in kernels[:12]
    ]


def bench_profiles(args, device, dtype, config, low_rank_config, model_name):
    """Where the time goes, dense vs lite, eager, at each batch size (the 'profile that shows it')."""
    variants = encoder_variants(args)
    encoders = build_encoders(config, low_rank_config, device, dtype, variants)
    rows = []
    for batch in args.batch:
        x = torch.randn(batch, config.num_mel_bins, 2 * config.max_source_positions, device=device, dtype=dtype)
        for variant in variants:
            totals, top = profile_encoder(encoders[variant], x, device)
            rows.append(dict(model=model_name, batch=batch, variant=variant, ms_by_category=totals, top=top))
            print(f"# profile {model_name} b{batch} {variant}: {totals}", file=sys.stderr)
    return rows


def tuned_config():
    """The Triton autotuner's pick for the last shape it ran (tiles, warps, stages), for the record."""
    from liteasr_hf.lite_whisper import triton_attention_lite_whisper as kernel

    best = getattr(getattr(kernel, "_attn_fwd_tuned", None), "best_config", None)
    return None if best is None else dict(best.kwargs, num_warps=best.num_warps, num_stages=best.num_stages)


def bench_attention_core(args, device, dtype, head_dim):
    from liteasr_hf.lite_whisper.attention_lite_whisper import attention_core, kernel_available
    import torch.nn.functional as F

    B, H, T = args.core_shape
    impl = "triton" if kernel_available(device) else "reference"
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    rows = []
    with torch.inference_mode():
        q, k, v = rnd(B, H, T, head_dim, scale=head_dim**-0.5), rnd(B, H, T, head_dim), rnd(B, H, T, head_dim)
        base = time_fn(lambda: F.scaled_dot_product_attention(q, k, v), device, args.warmup, args.iters)
        rows.append(dict(rank=head_dim, variant=f"sdpa dense (head_dim {head_dim})", impl="sdpa",
                         ms=round(base, 4), ratio=1.0))
        for r in args.core_ranks:
            q = rnd(B, H, T, r, scale=r**-0.5)
            k, v = rnd(B, 1, T, r), rnd(B, 1, T, r)
            vh = rnd(B, H, T, head_dim)
            kb = rnd(B, H, T)
            cases = [
                ("sdpa rank-space (k, v expanded)", "sdpa",
                 lambda: F.scaled_dot_product_attention(q, k.expand(B, H, T, r), v.expand(B, H, T, r))),
                ("core: shared k, v", impl, lambda: attention_core(q, k, v, kb)),
                (f"core: shared k, per-head v ({head_dim})", impl, lambda: attention_core(q, k, vh, kb)),
            ]
            for name, used, fn in cases:
                ms = time_fn(fn, device, args.warmup, args.iters)
                rows.append(dict(rank=r, variant=name, impl=used, ms=round(ms, 4), ratio=round(base / ms, 4),
                                 config=tuned_config() if used == "triton" else None))
                print(f"# core r{r} {name}: {ms:.3f} ms", file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------------------------


def markdown(result):
    lines = []
    enc = result["encoder"]
    if enc:
        lines += ["| model | mode | batch | dtype | variant | params | ms | speedup vs dense |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in enc:
            lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['dtype']} | {r['variant']} | "
                         f"{r['params_fraction']:.0%} | {r['ms']:.3f} | {r['ratio']:.2f}x |")
    core = result["attention_core"]
    if core:
        B, H, T = result["args"]["core_shape"]
        lines += ["", f"Attention core, B={B} H={H} T={T} {result['args']['dtype']}:", "",
                  "| rank | variant | impl | ms | speedup vs dense SDPA |", "|---|---|---|---|---|"]
        for r in core:
            lines.append(f"| {r['rank']} | {r['variant']} | {r['impl']} | {r['ms']:.3f} | {r['ratio']:.2f}x |")
    for p in result.get("profiles", []):
        if p is result["profiles"][0]:
            lines += ["", "Profile (eager, ms per forward by kernel category):", "",
                      "| model | batch | variant | attention | gemm | conv | other | top kernel |", "|---|---|---|---|---|---|---|---|"]
        t, top = p["ms_by_category"], p["top"][0] if p["top"] else dict(name="-", ms=0)
        lines.append(f"| {p['model']} | {p['batch']} | {p['variant']} | "
                     + " | ".join(f"{t.get(c, 0.0):.3f}" for c in ("attention", "gemm", "conv", "other"))
                     + f" | {top['name'][:40]} ({top['ms']:.3f}) |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="liteasr-hf benchmark",
        description=__doc__.split("\n\n")[0] + " Random weights: speed only, never accuracy.",
        epilog="GPU defaults: large-v3, fp16, batch 1 8 32, modes eager cuda-graph compile, core 8x20x1500. "
               "CPU defaults: tiny, fp32, batch 1, 400 input frames (200 encoder positions), eager, core 1x6x200.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--model", nargs="+", choices=sorted(RANDOM_SHAPES), default=None,
                   help="Whisper encoder shape(s); ignored when --ranks names a checkpoint config")
    p.add_argument("--ranks", default="c-like",
                   help="rank profile: 'c-like' (paper's (c): attn 304 / fc 480 at d=1280, scaled), "
                        "'fraction:F' (every projection at F x full rank), 'q_proj=32,k_proj=32,...' (these ranks in "
                        "every layer, the rest dense), or a lite checkpoint folder/config.json")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default fp16 on CUDA, fp32 on CPU")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes")
    p.add_argument("--modes", nargs="+", choices=MODES, default=None,
                   help="execution modes; cuda-graph and compile-cudagraphs are CUDA-only (skipped on CPU)")
    p.add_argument("--frames", type=int, default=None,
                   help="input mel frames (3000 = Whisper's 30 s; the encoder sees frames/2 positions)")
    p.add_argument("--no-naive", dest="naive", action="store_false",
                   help="skip the lite-sdpa (low-rank linears, stock attention) and dense-contig rows")
    p.add_argument("--core-ranks", type=int, nargs="*", default=[16, 32, 48, 64, 96],
                   help="attention-core ranks (multiples of 16); pass none to skip the core benchmark")
    p.add_argument("--core-shape", type=int, nargs=3, metavar=("B", "H", "T"), default=None,
                   help="attention-core batch, heads, length")
    p.add_argument("--skip-encoder", action="store_true", help="only the attention-core benchmark")
    p.add_argument("--profile", action="store_true",
                   help="also profile each encoder (eager, each batch size): ms by kernel category and top kernels")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed calls; the median is reported (default 30 on CUDA, 3 on CPU)")
    p.add_argument("--json", default="outputs/benchmark.json", help="where to write the results")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.json:
        try:  # before the timings, which take minutes
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        except OSError as e:
            p.error(f"--json {args.json}: cannot create its folder ({e.strerror or e})")

    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    args.device = args.device or ("cuda" if cuda else "cpu")
    defaults = dict(
        model=["large-v3"] if cuda else ["tiny"], dtype="fp16" if cuda else "fp32",
        batch=[1, 8, 32] if cuda else [1], modes=["eager", "cuda-graph", "compile"] if cuda else ["eager"],
        frames=3000 if cuda else 400, core_shape=[8, 20, 1500] if cuda else [1, 6, 200],
        warmup=10 if cuda else 1, iters=30 if cuda else 3,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.frames % 2:
        p.error("--frames must be even")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), torch_dtype(args.dtype)
    if device.type == "cpu" and os.environ.get("LITEASR_ATTENTION", "").lower() == "triton":
        print("# warning: LITEASR_ATTENTION=triton on the CPU runs Triton's interpreter: its timings are meaningless",
              file=sys.stderr)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    result = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__, args=vars(args), weights="random (speed only)", encoder=[], attention_core=[],
    )
    try:
        import transformers

        result["transformers"] = transformers.__version__
    except ImportError:
        pass

    head_dim = None
    if not args.skip_encoder:
        if args.ranks != "c-like" and not args.ranks.startswith("fraction:") and "=" not in args.ranks:
            configs = [("checkpoint", checkpoint_config(args.ranks, args.frames))]
        else:
            configs = [(name, whisper_config(name, args.frames)) for name in args.model]
        for name, config in configs:
            low_rank_config = rank_profile(args.ranks, config)
            result.setdefault("low_rank_config", {})[name] = low_rank_config
            result["encoder"] += bench_encoders(args, device, dtype, config, low_rank_config, name)
            if args.profile:
                result.setdefault("profiles", [])
                result["profiles"] += bench_profiles(args, device, dtype, config, low_rank_config, name)
            head_dim = config.d_model // config.encoder_attention_heads
    if args.core_ranks:
        if head_dim is None:
            d, _, _, h, _, _ = RANDOM_SHAPES[args.model[0]]
            head_dim = d // h
        result["attention_core"] = bench_attention_core(args, device, dtype, head_dim)

    table = markdown(result)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0
