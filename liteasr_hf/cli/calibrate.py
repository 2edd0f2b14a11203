"""`liteasr-hf calibrate`: compress a Whisper encoder with LiteASR and write a ready-to-use lite checkpoint folder.

With no arguments: the bundled real Whisper base, the shipped clips' calibration split, ranks for 80 % of the dense
encoder allocated by measured sensitivity, the default dynamic encoder context -> outputs/lite-whisper-base-size80
(offline). Every compression option is a field of liteasr_hf.CompressionConfig, its help written there once; this
command is argparse -> config -> compress -> save. What each default rests on: docs/results.md.

  liteasr-hf calibrate --model openai/whisper-small --dataset path/to/audiofolder --save-stats stats.safetensors
  liteasr-hf calibrate --resume-stats stats.safetensors --target-size 0.6          # no audio pass
  liteasr-hf calibrate --dataset english/ --dataset german/ --split-file de.json     # several datasets, mixed
  accelerate launch -m liteasr_hf.cli.calibrate ...   # the statistics pass sharded over processes
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
import time

from .options import DTYPES

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
    from ..conversion import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="liteasr-hf calibrate", description=__doc__, formatter_class=_Formatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help="dense Whisper: Hub id, local folder or bundled name")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available; the process's device under accelerate)")
    g.add_argument("--dtype", default="float32", choices=list(DTYPES.values()), help="dtype of the dense forward passes and of the saved weights")
    g = p.add_argument_group("calibration audio (repeat --dataset to mix datasets; the options after one are its own)")
    g.add_argument("--dataset", dest="datasets", action=_Dataset, default=None,
                   help="local audiofolder or Hub dataset id (default: the clips shipped with liteasr_hf)")
    g.add_argument("--split", action=_DatasetOption, default=None,
                   help="Hub split, or a key of the folder's split.json / --split-file (default: 'calibration' when there is one, Hub: 'train')")
    g.add_argument("--split-file", action=_DatasetOption, default=None, help="JSON file mapping split names to file names of the local folder")
    g.add_argument("--dataset-config", action=_DatasetOption, default=None, help="Hub dataset config")
    g.add_argument("--audio-column", action=_DatasetOption, default="audio", help="column holding the audio in a Hub dataset")
    g.add_argument("--num-clips", type=int, default=None, help="use this many clips of each dataset, drawn with --seed (a Hub dataset: through a seeded shuffle buffer of 1,000 rows); default all")
    g.add_argument("--batch-size", type=int, default=8, help="30 s windows per forward pass")
    groups = {"compression": p.add_argument_group("compression (liteasr_hf.CompressionConfig)"),
              "refinement": p.add_argument_group("refinement (off unless --refine-steps)"),
              "context": p.add_argument_group("dynamic encoder context (written into the checkpoint's config.json)")}
    for group, name, kw in compression_options():
        groups[group].add_argument("--" + name.replace("_", "-"), dest=name, **kw)
    g = groups["context"]
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


def compression_options() -> list[tuple[str, str, dict]]:
    """(group, field name, argparse keywords) of every CompressionConfig field, from the field's metadata: its help
    (fields named in backticks shown as options) with its default. The argparse default is SUPPRESS: an option not
    given leaves the field to CompressionConfig's own default."""
    from dataclasses import fields

    from ..calibration import CompressionConfig

    names = {f.name for f in fields(CompressionConfig)}

    def as_options(text):
        return re.sub(r"`(\w+)`", lambda m: "--" + m[1].replace("_", "-") if m[1] in names else m[0], text)

    out = []
    for f in fields(CompressionConfig):
        meta = dict(f.metadata)
        text, group, parse, shown = meta.pop("help"), meta.pop("group"), meta.pop("parse", None), meta.pop("default_text", None)
        if shown is None and f.default not in (None, False, ()):
            shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
        kw = {"default": argparse.SUPPRESS, "help": as_options(text + (f" (default: {shown})" if shown else "")).replace("%", "%%")}
        kind = meta.pop("type", None) or (str if f.default is None else type(f.default))
        if isinstance(f.default, bool):
            kw["action"] = "store_true"
        elif parse is None:
            kw["type"] = kind
        elif not meta.get("nargs"):  # one value: argparse parses it, naming the field in its error
            kw["type"] = _named(parse, f.name)
        kw.update(meta)  # a list with its own parser is parsed whole by to_config
        out.append((group, f.name, kw))
    return out


def _named(parse, name):
    """`parse` under the field's name, which argparse's "invalid <name> value" error shows."""
    def typed(text):
        return parse(text)

    typed.__name__ = name
    return typed


def to_config(args):
    """The CompressionConfig the options describe (ValueError naming the field for a bad value)."""
    from dataclasses import fields

    from ..calibration import CompressionConfig

    given = {f.name: getattr(args, f.name) for f in fields(CompressionConfig) if hasattr(args, f.name)}
    for f in fields(CompressionConfig):
        parse = f.metadata.get("parse")
        if f.name in given and parse is not None and f.metadata.get("nargs"):
            given[f.name] = parse(given[f.name])
    return CompressionConfig(**given)


def load_audio(args, seed: int):
    """(clips of every --dataset, one description); --num-clips draws with `seed`."""
    from ..audio import calibration_clips

    specs = args.datasets or [{"dataset": None}]
    clips, names = [], []
    for spec in specs:
        opts = {k: spec.get(k, getattr(args, k)) for k in PER_DATASET}
        got, name = calibration_clips(spec["dataset"], split=opts["split"], split_file=opts["split_file"], config=opts["dataset_config"],
                                      audio_column=opts["audio_column"], num_clips=args.num_clips, seed=seed)
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
    clips, data_name = load_audio(args, config.seed)
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
