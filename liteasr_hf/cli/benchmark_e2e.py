"""End-to-end transcription benchmark on real speech: dense vs lite vs lite + dynamic encoder context, per dtype and
batch size, through generate() or pipeline(), with a faster-whisper row on the same weights when it is installed.

Every row runs in this process on the same clips, the rows taking turns a few clips at a time (as many as the
least common multiple of the batch sizes), so that load from elsewhere slows every row alike, over --rounds; the
table gives wall time, real-time
factor, speed-up against dense fp32 (full 30 s window) at the same batch size and path, the encoder's share of the
time, and WER with its paired 95 % interval against that first row. faster-whisper rows run in a worker process of
their own (in one process with torch, the transformers rows ran up to 1.6x slower).

    liteasr-hf benchmark-e2e --lite outputs/lite-whisper-base-size80        # shipped clips, quick
    liteasr-hf benchmark-e2e --lite outputs/lite-whisper-base-size80 --dataset ../shared/data/speech-dev \\
        --split evaluation --batch 1 8 --json outputs/e2e.json                # the README's table
    liteasr-hf benchmark-e2e --long --lite outputs/base80-dev --rounds 2       # whole recordings of minutes
    liteasr-hf benchmark-e2e --top-of-bucket --lite outputs/base80-dev         # repetition loops, no timing

--long: recordings of minutes transcribed whole, each row (the transformers pipeline sequential and chunked, dense
and lite, the package's Transcriber, faster-whisper with and without its batched VAD pipeline) in a worker process
of its own, the language of each recording given; see liteasr_hf/evaluation/long_audio.py.

--top-of-bucket: not a timing but a loop count. A lite checkpoint's encoder reads the shortest context bucket that
holds the audio plus its margin; a clip ending just under the top of its bucket leaves the decoder the least padding
to see the speech end, and at the 10 s bucket such clips looped (docs/benchmarks.md, "Top-of-bucket clips"). This
builds such clips from --dataset's calibration clips only (default ../shared/data/speech-dev; deterministic from
--seed: 134 clips for buckets 10 / 15 / 20 s, clean, telephone-band, mu-law and noisy variants), decodes each one
greedily through generate with its loop guard, through generate with guard_loops=False (raw loops) and through
Transcriber, and prints per bucket and variant: raw loops, the guard's fallbacks and loops left after it,
Transcriber's fallbacks and loops, WER; the JSON holds every transcript, the machine and the recipe that rebuilds
the audio bit for bit; see liteasr_hf/evaluation/top_of_bucket.py.

In a checkout, `python scripts/benchmark_e2e.py ...` runs the same command (with the package installed: `pip install -e .`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from .options import DTYPES, torch_dtype

DEFAULT_ROWS = ["dense/fp32/full", "dense/bf16/full", "dense/cpu-int8/strided", "lite/fp32/full", "lite/cpu-bf16/strided",
                "lite/cpu-int8/strided"]
CONTEXTS = ("full", "dynamic", "strided", "full-strided")
ROW_DTYPES = ("fp32", "bf16", "fp16", "cpu", "cpu-bf16", "cpu-int8")


def build_parser() -> argparse.ArgumentParser:
    from liteasr_hf.conversion import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="liteasr-hf benchmark-e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", default=DEFAULT_MODEL, help=f"dense Whisper: bundled name, folder or Hub id (default {DEFAULT_MODEL})")
    p.add_argument("--lite", help="lite checkpoint folder or Hub id (rows 'lite/...'; default: none, dense rows only)")
    p.add_argument("--long", action="store_true",
                   help="long-audio mode: whole recordings (default --dataset: ../shared/data/speech-long), rows "
                        "dense-sequential dense-chunked lite-sequential lite-transcribe fw-transcribe fw-batched")
    p.add_argument("--languages", nargs="+", default=None, metavar="CODE",
                   help="--long: only the recordings in these languages (e.g. en)")
    p.add_argument("--rows", nargs="+", default=None, metavar="MODEL/DTYPE/CONTEXT",
                   help=f"MODEL dense|lite, DTYPE {'|'.join(ROW_DTYPES)} (cpu*: liteasr_hf.optimize_for_cpu, a bf16 encoder "
                        "where the CPU has it and the lean decoder layers, with an fp32 (cpu), bf16 (cpu-bf16) or int8 (cpu-int8) decoder), CONTEXT full (every frame of the 30 s window), dynamic (the "
                        "context buckets, every frame), strided (the buckets, past audio + margin one frame in --padding-stride) or "
                        "full-strided (the 30 s window, past audio + margin one frame in --padding-stride); a strided CONTEXT may "
                        "name its own stride, e.g. strided:4 (the first row is the reference; "
                        f"default: {' '.join(DEFAULT_ROWS)}, lite rows only with --lite); with --long, row names "
                        "(default: all, lite ones only with --lite)")
    p.add_argument("--buckets", type=float, nargs="+", default=None, metavar="SECONDS",
                   help="context buckets of the 'dynamic' rows (default: the lite checkpoint's encoder_context_buckets, else "
                        "10 15 20); with --top-of-bucket the buckets clips are built to top (default: the checkpoint's and 10)")
    p.add_argument("--margin", type=float, default=None, help="seconds of padding kept after the audio (default: the checkpoint's, "
                                                              "else 1.0); with --top-of-bucket the margin clips are built against")
    p.add_argument("--padding-stride", type=int, default=None, metavar="N",
                   help="the strided rows' padding stride where the row names none (default: the lite checkpoint's "
                        "encoder_padding_stride if over 1, else the default of new checkpoints)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--path", nargs="+", choices=["generate", "pipeline"], default=["generate"],
                   help="generate: the project's batched transcribe(); pipeline: pipeline('automatic-speech-recognition')")
    p.add_argument("--faster-whisper", default="auto", metavar="FOLDER|auto|off",
                   help="CTranslate2 folder of the dense weights for the faster-whisper rows (auto: the bundled one for a bundled --dense)")
    p.add_argument("--faster-whisper-compute", nargs="+", default=["int8"], help="faster-whisper compute types (default int8)")
    p.add_argument("--dataset", help="local audiofolder or Hub dataset (default: the clips shipped in the package; with "
                                     "--top-of-bucket a local folder with a split.json, default ../shared/data/speech-dev)")
    p.add_argument("--split", help="split.json key or Hub split (default for the shipped clips: evaluation)")
    p.add_argument("--limit", type=int, help="at most this many clips")
    p.add_argument("--rounds", type=int, default=2, help="repetitions over all clips; wall time is their median (--long: the best "
                                                                 "round, the median beside it) (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and CTranslate2 threads (default: torch's; with --long every core this process may use)")
    p.add_argument("--json", "--output-json", dest="json", default=None,
                   help="results, with every row's transcripts (default outputs/e2e.json, with --long "
                        "outputs/e2e-long.json, with --top-of-bucket outputs/e2e-top-of-bucket.json)")
    g = p.add_argument_group("random weights of a model's exact shapes (speed only; large models without their weights)")
    g.add_argument("--random-shape", default=None, metavar="SHAPE",
                   help="instead of --dense / --lite: random weights of this shape (tiny, base, small, medium, large-v3, "
                        "large-v3-turbo), the clips for their lengths, --tokens decoded per clip; rows dense and lite, "
                        "full and dynamic context, and on CUDA lite with the encoder replayed from a CUDA graph per bucket")
    g.add_argument("--random-ranks", default="c-like", metavar="SPEC",
                   help="the random lite model's ranks: c-like (the paper's configuration (c), scaled), fraction:F or "
                        "NAME=RANK pairs, as `liteasr-hf benchmark --ranks`")
    g.add_argument("--tokens", type=int, default=64, help="new tokens decoded per clip in --random-shape rows")
    g.add_argument("--device", default=None, help="--random-shape rows: cuda or cpu (default: cuda if available); "
                                                  "--top-of-bucket: default cpu")
    g.add_argument("--random-dtype", default=None, choices=sorted(DTYPES), help="--random-shape rows (default: fp16 on CUDA, fp32 on CPU)")
    t = p.add_argument_group("top-of-bucket clips (repetition loops of clips ending near the top of a context bucket)")
    t.add_argument("--top-of-bucket", action="store_true",
                   help="count repetition loops on clips built to end just under (bucket - margin), per bucket and "
                        "variant: generate with and without its loop guard, and Transcriber (needs --lite; no timing)")
    t.add_argument("--clips-per-bucket", type=int, default=None, metavar="N",
                   help="at most N clips of each bucket and variant, the clip kinds in turn (default: all)")
    t.add_argument("--seed", type=int, default=0, help="the clips' seed (default 0: the recipe of docs/benchmarks.md)")
    t.add_argument("--recipe", default=None, metavar="FILE",
                   help="the clips of this recipe (a JSON list of entries, or an earlier run's --json) instead of "
                        "building them from --buckets / --margin / --seed")
    t.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="the model as Transcriber loads it (default auto: optimize_for_cpu's choice on a CPU)")
    return p


def write_results(path: str, results, settings) -> int:
    """The JSON every mode writes ({"settings", "results"}); 0, the command's status."""
    from liteasr_hf.evaluation.run import write_json

    write_json(results, path, settings)
    print(f"\nresults: {path}", file=sys.stderr)
    return 0


def row_context(context: str):
    """(context, stride or None) of a row's CONTEXT ("strided:4" -> ("strided", 4)), or None if it is not one."""
    name, _, stride = context.partition(":")
    if name not in CONTEXTS or (stride and (not stride.isdigit() or int(stride) < 1 or "strided" not in name)):
        return None
    return name, int(stride) if stride else None


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    args.json = args.json or ("outputs/e2e-long.json" if args.long else
                              "outputs/e2e-top-of-bucket.json" if args.top_of_bucket else "outputs/e2e.json")
    if args.rounds < 1 or (args.threads is not None and args.threads < 1) or (args.limit is not None and args.limit < 1):
        p.error("--rounds, --threads and --limit must be at least 1")
    if args.top_of_bucket:
        if args.long or args.random_shape:
            p.error("--top-of-bucket goes with neither --long nor --random-shape")
        if not args.lite:
            p.error("--top-of-bucket needs --lite (a lite checkpoint with context buckets)")
        if args.clips_per_bucket is not None and args.clips_per_bucket < 1:
            p.error("--clips-per-bucket must be at least 1")
        return args
    if args.long:
        if args.random_shape:
            p.error("--long and --random-shape do not go together")
        from liteasr_hf.evaluation.long_audio import check_rows

        if args.rows:  # the default depends on what is installed: long_main
            args.rows = check_rows(args.rows, lite=bool(args.lite))
        return args
    if args.random_shape:
        from liteasr_hf.evaluation.random_e2e import RANDOM_SHAPES

        if args.random_shape not in RANDOM_SHAPES:
            p.error(f"--random-shape: unknown shape {args.random_shape!r}; known: {', '.join(RANDOM_SHAPES)}")
        if args.tokens < 1:
            p.error("--tokens must be at least 1")
    rows = args.rows or [r for r in DEFAULT_ROWS if args.lite or not r.startswith("lite")]
    for r in rows:
        parts = r.split("/")
        if len(parts) != 3 or parts[0] not in ("dense", "lite") or parts[1] not in ROW_DTYPES or not row_context(parts[2]):
            p.error(f"--rows: {r!r} is not MODEL/DTYPE/CONTEXT with MODEL dense|lite, DTYPE {'|'.join(ROW_DTYPES)}, "
                    f"CONTEXT {'|'.join(CONTEXTS)} (a strided one with an optional :N stride)")
        if parts[0] == "lite" and not args.lite and not args.random_shape:
            p.error(f"--rows: {r!r} needs --lite")
    if any(b < 1 for b in args.batch):
        p.error("--batch must be at least 1")
    if args.padding_stride is not None and args.padding_stride < 1:
        p.error("--padding-stride must be at least 1")
    args.rows = rows
    return args


def random_main(args) -> int:
    """--random-shape: dense vs lite, full vs dynamic context (and CUDA graphs per bucket on CUDA), fixed tokens."""
    import torch
    from transformers import WhisperFeatureExtractor

    from liteasr_hf.evaluation import end_to_end as e2e
    from liteasr_hf.evaluation import random_e2e as r
    from liteasr_hf.calibration.config import DEFAULT_CONTEXT_BUCKETS
    from liteasr_hf.evaluation.run import load_groups

    from .benchmark import rank_profile

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch_dtype(args.random_dtype or ("fp16" if device.type == "cuda" else "fp32"))
    clips = [c for _, group in load_groups(args.dataset, split=args.split, limit=args.limit) for c in group]
    dense = r.random_whisper(args.random_shape, device, dtype)
    lite = r.random_lite(dense, rank_profile(args.random_ranks, dense.config))
    dense_ctx = e2e.as_lite(dense)  # the dense weights, as lite-whisper so they can take the context
    buckets = args.buckets or list(DEFAULT_CONTEXT_BUCKETS)
    margin = 1.0 if args.margin is None else args.margin
    fe = WhisperFeatureExtractor(feature_size=dense.config.num_mel_bins)
    rows, graphs = {}, r.CUDAGraphEncoder(lite.get_encoder())  # one graph per (batch, bucket), shared by the rounds
    for batch in args.batch:
        for label, model, context in (("dense full", dense, None), ("dense dynamic", dense_ctx, buckets),
                                      ("lite full", lite, None), ("lite dynamic", lite, buckets)):
            run = r.fixed_tokens_runner(model, fe, batch, args.tokens)
            rows[f"{label} b{batch}"] = r.in_context(model, context, margin, run)
        if device.type == "cuda":
            run = r.fixed_tokens_runner(lite, fe, batch, args.tokens)
            rows[f"lite dynamic + CUDA graphs b{batch}"] = r.in_context(lite, buckets, margin, run, graphs)
    results = r.run_random_rows(rows, [c.audio for c in clips], args.rounds)
    settings = {"shape": args.random_shape, "ranks": args.random_ranks, "device": str(device), "dtype": str(dtype),
                "tokens": args.tokens, "clips": len(clips), "audio_s": sum(c.seconds for c in clips), "buckets": buckets,
                "margin": margin, "rounds": args.rounds, "machine": e2e.machine(), "torch": torch.__version__,
                "dataset": args.dataset or "shipped clips", "split": args.split}
    print(f"random {args.random_shape} weights (speed only), {len(clips)} clips, {args.tokens} tokens each, {device} {dtype}\n")
    print("| row | wall s | x dense full (same batch) |\n|---|---|---|")
    for res in results:
        batch = res["row"].rsplit(" b", 1)[1]
        ref = next(x for x in results if x["row"] == f"dense full b{batch}")
        res["speedup"] = ref["wall_s"] / res["wall_s"]
        print(f"| {res['row']} | {res['wall_s']:.2f} | {res['speedup']:.2f} |")
    return write_results(args.json, results, settings)


def long_rows(args) -> dict:
    """{row: the folder its worker loads} for --long: the rows asked for, else every row this install can run (lite
    rows with --lite, lite-transcribe with the transcription engine, fw rows with faster-whisper and a CTranslate2
    folder); bundled names are converted here, once, before any worker starts."""
    import importlib.util

    from liteasr_hf.conversion import BUNDLED_MODELS, resolve_model
    from liteasr_hf.conversion.bundled import ct2_folder
    from liteasr_hf.evaluation import long_audio as la

    fw = args.faster_whisper
    if fw == "auto":
        fw = ct2_folder(args.dense) if args.dense in BUNDLED_MODELS else None
    fw = None if fw == "off" else fw
    rows = args.rows
    if rows is None:
        skip = {"lite-transcribe": importlib.util.find_spec("liteasr_hf.transcription.engine") is None,
                "fw-transcribe": fw is None or importlib.util.find_spec("faster_whisper") is None}
        skip["fw-batched"] = skip["fw-transcribe"]
        rows = [r for r in la.ROWS if (args.lite or r not in la.LITE_ROWS) and not skip.get(r)]
        if any(skip.values()):
            print(f"rows left out (not available here): {', '.join(r for r, s in skip.items() if s)}", file=sys.stderr)
    if fw is None and any(r in la.FW_ROWS for r in rows):
        raise ValueError("the fw rows need a CTranslate2 folder of the dense weights: --faster-whisper FOLDER "
                         "(auto finds it only for a bundled --dense)")
    dense, lite = resolve_model(args.dense), resolve_model(args.lite) if args.lite else None
    return {r: fw if r in la.FW_ROWS else lite if r in la.LITE_ROWS else dense for r in rows}


def long_main(args) -> int:
    """--long: the long-audio rows, each in its worker process; a markdown table, and JSON with every transcript."""
    from liteasr_hf.evaluation import long_audio as la

    recordings = la.load_recordings(args.dataset, languages=args.languages, limit=args.limit)
    models = long_rows(args)
    threads = args.threads or len(os.sched_getaffinity(0))
    results, settings = la.benchmark(list(models), recordings, models, threads=threads, rounds=args.rounds)
    settings.update(dataset=args.dataset or la.DEFAULT_DATASET, dense=args.dense, lite=args.lite, languages=args.languages)
    print(la.markdown(results, settings))
    return write_results(args.json, results, settings)


def top_of_bucket_main(args) -> int:
    """--top-of-bucket: loops on clips at the top of each bucket; a markdown table, and JSON with every transcript."""
    import torch

    from liteasr_hf.evaluation import top_of_bucket as tob

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, settings = tob.benchmark(args.lite, args.dataset, buckets=args.buckets, margin=args.margin, seed=args.seed,
                                   clips_per_bucket=args.clips_per_bucket, dtype=args.dtype, device=args.device,
                                   recipe=tob.load_recipe(args.recipe) if args.recipe else None)
    print(tob.markdown(rows, settings))
    return write_results(args.json, rows, settings)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.long:
        return long_main(args)
    if args.top_of_bucket:
        return top_of_bucket_main(args)
    if args.random_shape:
        return random_main(args)
    import torch

    from liteasr_hf.conversion import BUNDLED_MODELS
    from liteasr_hf.calibration.config import DEFAULT_CONTEXT_BUCKETS, DEFAULT_PADDING_STRIDE
    from liteasr_hf.cpu import cpu_bf16_support, optimize_for_cpu
    from liteasr_hf.conversion.bundled import ct2_folder
    from liteasr_hf.evaluation import end_to_end as e2e
    from liteasr_hf.evaluation.run import load_groups, load_model
    from liteasr_hf.generation import generate_kwargs

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    clips = [c for _, group in load_groups(args.dataset, split=args.split, limit=args.limit) for c in group]
    models = {}

    def model(kind, dtype):
        if (kind, dtype) not in models:
            weights = torch_dtype(dtype) if dtype in DTYPES else torch.float32  # cpu*: optimize_for_cpu's own
            m, processor, _ = load_model(args.lite if kind == "lite" else args.dense, dtype=weights)
            m = e2e.as_lite(m)
            if dtype.startswith("cpu"):
                m = optimize_for_cpu(m, decoder={"cpu": "fp32", "cpu-bf16": "bf16", "cpu-int8": "int8"}[dtype])
            models[kind, dtype] = (m, processor)
        return models[kind, dtype]

    lite_config = model("lite", "fp32")[0].config if args.lite else None
    buckets = args.buckets or (lite_config and lite_config.encoder_context_buckets) or list(DEFAULT_CONTEXT_BUCKETS)
    margin = args.margin if args.margin is not None else (lite_config.encoder_context_margin if lite_config else 1.0)
    checkpoint_stride = getattr(lite_config, "encoder_padding_stride", 1) if lite_config else 1
    stride = args.padding_stride or (checkpoint_stride if checkpoint_stride > 1 else DEFAULT_PADDING_STRIDE)
    rows = []
    for path in args.path:
        for batch in args.batch:
            for spec in args.rows:
                kind, dtype, context = spec.split("/")
                context, row_stride = row_context(context)
                m, processor = model(kind, dtype)
                gen = generate_kwargs(m, "en")
                row = e2e.Row(f"{spec} b{batch} {path}", None)
                row.run = e2e.transformers_runner(m, processor, batch_size=batch, path=path, gen=gen, margin=margin,
                                                  buckets=buckets if context in ("dynamic", "strided") else None,
                                                  timer_box=row.encoder_seconds,
                                                  padding_stride=(row_stride or stride) if "strided" in context else 1)
                rows.append(row)
    fw = args.faster_whisper
    if fw == "auto":
        fw = ct2_folder(args.dense) if args.dense in BUNDLED_MODELS else "off"
    if fw != "off":
        for batch in args.batch:
            for compute in args.faster_whisper_compute:
                run = e2e.faster_whisper_runner(fw, compute, threads, "en", 128, batch_size=batch)
                if run is None:
                    print("faster-whisper is not installed: no faster-whisper row (pip install faster-whisper)", file=sys.stderr)
                    break
                rows.append(e2e.Row(f"faster-whisper {compute} b{batch}", run))
    chunk = math.lcm(*args.batch)  # every row's batches are those it forms on the whole sorted list
    e2e.run_rows(rows, clips, args.rounds, chunk)
    # faster-whisper rows compare with the transformers rows of their batch size through generate
    results = e2e.summarize(rows, clips, group=lambda label: label.split(" ", 1)[1] if not label.startswith("faster")
                            else label.rsplit(" ", 1)[1] + " generate")
    settings = {"clips": len(clips), "audio_s": sum(c.seconds for c in clips), "machine": e2e.machine(),
                "torch": torch.__version__, "threads": threads, "bf16": cpu_bf16_support(), "rounds": args.rounds,
                "chunk": chunk, "buckets": buckets, "margin": margin, "padding_stride": stride, "dense": args.dense, "lite": args.lite,
                "dataset": args.dataset or "shipped clips", "split": args.split}
    print(e2e.markdown(results, settings))
    return write_results(args.json, results, settings)
