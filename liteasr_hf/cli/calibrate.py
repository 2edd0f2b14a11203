"""`liteasr-hf calibrate`: compress a Whisper encoder with LiteASR and write a ready-to-use lite checkpoint folder.

With no arguments: the bundled real Whisper base, the shipped clips' calibration split, ranks for 80 % of the dense
encoder allocated by measured sensitivity, dynamic encoder context 10 / 15 / 20 s -> outputs/lite-whisper-base-size80
(offline). Every compression option is a field of liteasr_hf.CompressionConfig; this command is argparse -> config ->
compress -> save.

  liteasr-hf calibrate --model openai/whisper-small --dataset path/to/audiofolder --save-stats stats.safetensors
  liteasr-hf calibrate --resume-stats stats.safetensors --target-size 0.6          # no audio pass
  liteasr-hf calibrate --dataset english/ --dataset german/ --split-file de.json     # several datasets, mixed
  accelerate launch -m liteasr_hf.cli.calibrate ...   # the statistics pass sharded over processes
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time

DTYPES = ("float32", "float16", "bfloat16")
PER_DATASET = ("split", "split_file", "dataset_config", "audio_column")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" only where there is a default and the help does not already say it."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], ()) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Dataset(argparse.Action):
    """--dataset starts a new calibration dataset; the options after it (--split, --split-file, ...) are its own."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.datasets = [*(namespace.datasets or []), {"dataset": value}]


class _DatasetOption(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        if namespace.datasets:
            namespace.datasets[-1][self.dest] = value
        else:  # before any --dataset: the shipped clips', or every dataset's default
            setattr(namespace, self.dest, value)


def build_parser() -> argparse.ArgumentParser:
    from ..calibration.config import ALLOCATIONS, DEFAULT_CONTEXT_BUCKETS, DEFAULT_PADDING_STRIDE, DEFAULT_TARGET_SIZE, REFINE_TRAIN, SEQUENTIAL_MODES
    from ..calibration.ranks import PRESET_ALIASES, PRESETS
    from ..conversion import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="liteasr-hf calibrate", description=__doc__, formatter_class=_Formatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help="dense Whisper: Hub id, local folder or bundled name")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available; the process's device under accelerate)")
    g.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the dense forward passes and of the saved weights")
    g = p.add_argument_group("calibration audio (repeat --dataset to mix datasets; the options after one are its own)")
    g.add_argument("--dataset", dest="datasets", action=_Dataset, default=None,
                   help="local audiofolder or Hub dataset id (default: the clips shipped with liteasr_hf)")
    g.add_argument("--split", action=_DatasetOption, default=None,
                   help="Hub split, or a key of the folder's split.json / --split-file (default: 'calibration' when there is one, Hub: 'train')")
    g.add_argument("--split-file", action=_DatasetOption, default=None, help="JSON file mapping split names to file names of the local folder")
    g.add_argument("--dataset-config", action=_DatasetOption, default=None, help="Hub dataset config")
    g.add_argument("--audio-column", action=_DatasetOption, default="audio", help="column holding the audio in a Hub dataset")
    g.add_argument("--num-clips", type=int, default=None, help="use this many clips of each dataset, drawn with --seed (a Hub dataset: through a seeded shuffle buffer of 1,000 rows); default all")
    g.add_argument("--seed", type=int, default=0, help="seeds the --num-clips draw and the refinement (held-back clips, batches)")
    g.add_argument("--batch-size", type=int, default=8, help="30 s windows per forward pass")
    g = p.add_argument_group("compression (liteasr_hf.CompressionConfig)")
    g.add_argument("--preset", default=None, choices=list(PRESETS) + list(PRESET_ALIASES),
                   help="θ presets: " + ", ".join(f"{k} {v}" for k, v in PRESETS.items()) +
                        f" (default without --preset/--theta-*/--target-size: --target-size {DEFAULT_TARGET_SIZE} with sensitivity allocation)")
    g.add_argument("--theta-attn", type=float, default=None, help="variance kept by attention linears, in (0, 1) (overrides the preset's)")
    g.add_argument("--theta-mlp", type=float, default=None, help="variance kept by MLP linears, in (0, 1) (overrides the preset's)")
    g.add_argument("--target-size", type=float, default=None, help="encoder parameters as a fraction of dense, in (0, 1]: greedy allocation instead of θ")
    g.add_argument("--allocation", default="sensitivity", choices=ALLOCATIONS,
                   help="with --target-size: ranks by each linear's measured effect on the encoder output per parameter "
                        "(lower WER at every size measured, docs/results.md) or by its own variance kept per parameter")
    g.add_argument("--padding-weight", default="0.5", help="share of the mean/covariance given to padding frames, in [0, 1]; 'all' = every frame alike (paper)")
    g.add_argument("--sequential", default="off", choices=SEQUENTIAL_MODES,
                   help="off = every linear from the dense statistics (paper); dense+residual = layer by layer, each linear "
                        "fitted by reduced-rank regression to the dense outputs (undoes upstream error; ~10x slower)")
    g.add_argument("--probe-clips", type=int, default=8, help="the first this many calibration windows measure each linear's sensitivity")
    g.add_argument("--stages", type=float, nargs="+", default=[], metavar="SIZE",
                   help="compress progressively: first to these sizes (descending, above --target-size), each stage re-measured "
                        "on the calibration windows and refined with --refine-steps; each stage costs one more statistics pass")
    g = p.add_argument_group("refinement (off unless --refine-steps)")
    g.add_argument("--refine-steps", type=int, default=0,
                   help="refine the factors at most this many steps on encoder-output MSE, early stopping on held-back windows "
                        "(tiny.en 80 %%: 6.54 -> 5.71 %% WER on speech-dev; base unchanged; ~5-12 s a step on 2 CPU cores)")
    g.add_argument("--refine-lr", type=float, default=1e-4, help="Adam learning rate")
    g.add_argument("--refine-warmup", type=int, default=0, help="steps over which the learning rate rises linearly to --refine-lr")
    g.add_argument("--refine-train", default="factors", choices=REFINE_TRAIN, help="what may change: the factors and biases, plus the layer norms, or every encoder weight")
    g.add_argument("--refine-kl", type=float, default=0.0,
                   help="weight of the decoder KL on the dense model's greedy transcripts (0 = encoder MSE only); use a lower "
                        "--refine-lr (3e-5) and --refine-warmup 25 with it")
    g.add_argument("--refine-context", action="store_true",
                   help="refine at the dynamic context: loss the decoder KL against the dense model on the full window, no "
                        "encoder MSE (tiny.en 80 %% at an 8 s floor: 6.36 against 24.42 %% WER unrefined); needs --refine-steps and --refine-kl")
    g = p.add_argument_group("dynamic encoder context (written into the checkpoint's config.json)")
    g.add_argument("--context-buckets", nargs="+", default=None, metavar="SECONDS",
                   help="the encoder runs on the smallest of these contexts (seconds) that holds the audio plus --context-margin, "
                        "else on the full 30 s window; 'full' = always the full window, as Whisper (default: "
                        f"{' '.join(f'{b:g}' for b in DEFAULT_CONTEXT_BUCKETS)}, those shorter than the model's window; 10 s cost "
                        "no WER on speech-dev's calibration clips, 8 s and below loop without --refine-context)")
    g.add_argument("--context-margin", type=float, default=1.0, help="seconds of the padding after the audio the encoder keeps")
    g.add_argument("--padding-stride", type=int, default=DEFAULT_PADDING_STRIDE, metavar="N",
                   help="past the audio plus --context-margin the encoder runs on one padding frame in N, each standing for "
                        f"its N neighbours; 1 = every frame (default {DEFAULT_PADDING_STRIDE}: base 80 %% on a 2-core CPU 1.30x / 1.45x faster "
                        "end to end at batch 1 / 8 than every frame; no transcript of speech-dev's calibration clips changed, "
                        "one of its 115 evaluation clips did)")
    g.add_argument("--context-only", action="store_true",
                   help="no compression: the dense model wrapped as lite-whisper with no low-rank layer, only the dynamic context (no audio is read)")
    g = p.add_argument_group("statistics")
    g.add_argument("--save-stats", default=None, help="save the statistics here (.safetensors), also during the pass")
    g.add_argument("--resume-stats", action="append", default=[], help="start from saved statistics (repeat to merge several); windows already counted are skipped")
    g.add_argument("--save-every", type=int, default=32, help="with --save-stats: save every this many windows")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default=None, help="default: outputs/lite-<model>-<size or preset>")
    g.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload the folder to this Hub repo")
    g.add_argument("--private", action="store_true", help="create the Hub repo private")
    g.add_argument("--token", default=None, help="Hub token (default: the usual huggingface_hub places)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


def to_config(args):
    """The CompressionConfig the options describe (ValueError naming the field for a bad value)."""
    from ..calibration import CompressionConfig

    if args.context_buckets is None:
        buckets = "auto"
    elif [b.lower() for b in args.context_buckets] == ["full"]:
        buckets = None
    else:
        try:
            buckets = [float(b) for b in args.context_buckets]
        except ValueError:
            raise ValueError(f"--context-buckets takes seconds or 'full', got {' '.join(args.context_buckets)}") from None
    try:
        padding = None if args.padding_weight == "all" else float(args.padding_weight)
    except ValueError:
        raise ValueError(f"--padding-weight takes a number in [0, 1] or 'all', got {args.padding_weight!r}") from None
    return CompressionConfig(
        target_size=args.target_size, preset=args.preset, theta_attn=args.theta_attn, theta_mlp=args.theta_mlp,
        allocation=args.allocation, padding_weight=padding, sequential=args.sequential, probe_clips=args.probe_clips,
        stages=args.stages, refine_steps=args.refine_steps, refine_lr=args.refine_lr, refine_warmup=args.refine_warmup,
        refine_train=args.refine_train, refine_kl=args.refine_kl, refine_context=args.refine_context,
        context_buckets=buckets, context_margin=args.context_margin, padding_stride=args.padding_stride, seed=args.seed)


def load_audio(args):
    """(clips of every --dataset, one description)."""
    from ..audio import calibration_clips

    specs = args.datasets or [{"dataset": None}]
    clips, names = [], []
    for spec in specs:
        opts = {k: spec.get(k, getattr(args, k)) for k in PER_DATASET}
        got, name = calibration_clips(spec["dataset"], split=opts["split"], split_file=opts["split_file"], config=opts["dataset_config"],
                                      audio_column=opts["audio_column"], num_clips=args.num_clips, seed=args.seed)
        clips += got
        names.append(f"{name} ({len(got)} clips)" if len(specs) > 1 else name)
    return clips, " + ".join(names)


def push(folder: str, repo: str, private: bool, token: str | None) -> str:
    from huggingface_hub import create_repo, upload_folder

    url = create_repo(repo, private=private, token=token, exist_ok=True, repo_type="model")
    upload_folder(repo_id=repo, folder_path=folder, token=token, commit_message="LiteASR checkpoint (liteasr-hf calibrate)")
    return str(url)


def main(argv=None) -> int:
    import torch
    from accelerate import PartialState

    from ..calibration import Compressor, context_only, save_compressed
    from ..calibration.card import ranks_table
    from ..calibration.compressor import load_whisper

    p = build_parser()
    args = p.parse_args(argv)
    try:
        config = to_config(args)
    except ValueError as e:
        p.error(str(e))
    for path in filter(None, [*args.resume_stats, *(d.get("split_file") for d in args.datasets or []), args.split_file]):
        if not os.path.isfile(path):
            p.error(f"no such file: {path}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    state = PartialState(cpu=args.device == "cpu")  # first call: with --device cpu, launched processes run on CPUs (gloo)
    device = args.device or (str(state.device) if state.num_processes > 1 else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, processor = load_whisper(args.model, device, getattr(torch, args.dtype))
    base = os.path.basename(args.model.rstrip("/"))
    out = args.output_dir or os.path.join("outputs", f"lite-{base}-{'context' if args.context_only else config.label}")
    try:  # an unwritable output folder fails now, not after the calibration
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {out} ({e.strerror or e})") from e
    if args.context_only:
        from ..lite_whisper import save_lite_checkpoint

        lite = context_only(model, config)
        save_lite_checkpoint(lite, out, processor)
        buckets = lite.config.encoder_context_buckets
        print(f"{args.model} with no low-rank layer, dynamic encoder context: "
              f"{'full 30 s window' if buckets is None else f'buckets {buckets} s, margin {config.context_margin} s'}, "
              f"padding stride {config.padding_stride}; "
              f"{time.perf_counter() - t0:.1f} s\nwrote {out}")
        return 0
    clips, data_name = load_audio(args)
    compressor = Compressor(model, processor, clips, batch_size=args.batch_size, resume_stats=args.resume_stats,
                            save_stats=args.save_stats, save_every=args.save_every, progress=not args.no_progress)
    lite = compressor.compress(config)
    if lite is None:  # not the main process: its shard of the statistics is counted
        return 0
    command = shlex.join(["liteasr-hf", "calibrate", *(sys.argv[1:] if argv is None else argv)])
    save_compressed(lite, out, processor, base_model=args.model, dataset=data_name, command=command, repo=args.push_to_hub)
    record = lite.liteasr_calibration
    size = record["size"]
    print(ranks_table(record["ranks"], record["num_layers"]))
    print(f"encoder: {size['lite']:,} / {size['dense']:,} parameters = {size['fraction']:.1%} of dense; "
          f"{sum(k is not None for k in record['ranks'].values())}/{len(record['ranks'])} linears low-rank")
    print(f"calibration time {time.perf_counter() - t0:.1f} s, peak memory {record['calibration']['peak_memory_gb']:.2f} GB\nwrote {out}")
    if args.push_to_hub:
        try:
            url = push(out, args.push_to_hub, args.private, args.token)
        except Exception as e:  # offline, no token, no rights: the local folder is complete either way
            print(f"error: push to the Hub as {args.push_to_hub} failed: {type(e).__name__}: {e}\n"
                  f"The checkpoint is complete in {out}; push it later with `hf upload {args.push_to_hub} {out}`.", file=sys.stderr)
            return 3
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":  # accelerate launch -m liteasr_hf.cli.calibrate
    from . import run

    run("calibrate", sys.argv[1:])
