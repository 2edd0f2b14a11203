"""`liteasr-hf transcribe`: transcribe recordings of any length to text, SRT / WebVTT subtitles and JSON.

Each input AUDIO is a file (any format FFmpeg reads, video files' audio track included), a folder (every audio or
video file inside it, recursively), a glob pattern, or - for stdin. For each recording <output-dir>/<name>.txt, .srt,
.vtt and .json are written (each complete or not at all); inputs from different folders with the same name get
their folder's name in front ("a_talk", "b_talk"), and the command says so.

A run resumes: an input whose requested outputs all exist is skipped (--overwrite does them again), so a run that
was killed, or a folder that grew, only costs the recordings still missing. One bad file (missing, corrupt, no audio)
is an `error:` line, the others are still transcribed, and the exit status is 1.

  liteasr-hf transcribe talk.mp3                                    # ./talk.txt, .srt, .vtt, .json
  liteasr-hf transcribe recordings/ --output-dir transcripts --output-format srt,txt
  liteasr-hf transcribe 'meetings/**/*.m4a' --model bundled/whisper-tiny.en --device cuda
  ffmpeg -i rtsp://... -t 60 -f wav - | liteasr-hf transcribe - --output-dir out
  accelerate launch -m liteasr_hf.cli.transcribe recordings/ ...    # the inputs split between processes / GPUs
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time
from collections import defaultdict

from .options import DTYPES

# What a folder or a pattern contributes; a file named directly is read whatever its extension.
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "m4a", "m4b", "aac", "ogg", "oga", "opus", "wma", "aif", "aiff",
                    "webm", "mp4", "mkv", "mov", "avi")


def build_parser() -> argparse.ArgumentParser:
    from ..conversion import DEFAULT_MODEL
    from ..transcription.writers import FORMATS

    p = argparse.ArgumentParser(prog="liteasr-hf transcribe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", nargs="+", metavar="AUDIO",
                   help="audio or video files, folders (searched recursively for files ending in "
                        f"{', '.join('.' + e for e in AUDIO_EXTENSIONS)}), glob patterns (the same files), or - for stdin "
                        "(written as stdin.*, always transcribed)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"lite or dense Whisper: bundled name, local folder or Hub id "
                   f"(default {DEFAULT_MODEL})")
    p.add_argument("--output-dir", default=".", help="folder for the outputs, created if missing (default: the current folder)")
    p.add_argument("--output-format", default="all", type=_formats,
                   help=f"comma-separated, from {', '.join(FORMATS)}; or all (default: all)")
    p.add_argument("--language", help="spoken language code (en, de, ...) for a multilingual model (default: detected)")
    p.add_argument("--task", choices=["transcribe", "translate"], default="transcribe",
                   help="translate: English text from speech in another language (multilingual models; default transcribe)")
    p.add_argument("--word-timestamps", action="store_true", help="time every word too (in the JSON output)")
    p.add_argument("--batch-size", type=int, default=16, help="speech pieces decoded at once (default 16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu; with cuda under accelerate launch, "
                   "each process's own GPU)")
    p.add_argument("--dtype", choices=("auto", *DTYPES.values()), default="auto",
                   help="weights and activations; auto: the fast choice for the device: on a CPU bfloat16 where it is "
                        "native, else float32 with an int8 decoder; on CUDA float16 (default auto)")
    p.add_argument("--mode", choices=["vad", "sequential"], default="vad",
                   help="vad: the speech pieces a voice-activity detector finds, decoded in batches; sequential: "
                        "Whisper's long-form decoding, 30 s windows each conditioned on the text before (default vad)")
    p.add_argument("--overwrite", action="store_true",
                   help="transcribe every input again (default: resume, skipping inputs whose outputs all exist)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, notes or summary; errors are still printed")
    return p


def _formats(value: str) -> tuple[str, ...]:
    from ..transcription.writers import FORMATS

    if value.strip().lower() == "all":
        return FORMATS
    formats = tuple(dict.fromkeys(f.strip().lower() for f in value.split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(FORMATS)} (comma-separated) or all")
    return formats


def is_audio_name(path: str) -> bool:
    return os.path.splitext(path)[1][1:].lower() in AUDIO_EXTENSIONS


def _folder_files(folder: str) -> list[str]:
    """The audio / video files under `folder`, hidden files and folders left out (macOS's "._x.wav" are not audio)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files if not f.startswith(".") and is_audio_name(f)]
    return found


def collect_inputs(args: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(sorted unique sources, [(argument, problem)]) for the AUDIO arguments. A path that does not exist is kept as
    a source (it fails in its turn, naming itself); a folder without audio files or a pattern matching none is a
    problem."""
    sources, problems = [], []
    for arg in args:
        if arg == "-" or (os.path.exists(arg) and not os.path.isdir(arg)):
            sources.append(arg)
        elif os.path.isdir(arg):
            files = _folder_files(arg)
            sources += files
            if not files:
                problems.append((arg, f"no audio or video files in this folder (looked for {', '.join(AUDIO_EXTENSIONS)})"))
        elif any(c in arg for c in "*?["):  # a pattern the shell did not expand (Windows, or quoted)
            matches = sorted(glob.glob(arg, recursive=True))
            files = [m for m in matches if os.path.isfile(m) and is_audio_name(m)]
            files += [f for m in matches if os.path.isdir(m) for f in _folder_files(m)]
            sources += files
            if not files:
                problems.append((arg, "no audio or video file matches this pattern"))
        else:
            sources.append(arg)
    unique = {}
    for s in sources:
        unique.setdefault(s if s == "-" else os.path.realpath(s), s)
    return sorted(unique.values()), problems


def output_stems(sources: list[str]) -> tuple[list[str], list[str]]:
    """(output stem of each source, notes). A stem is the file's name without its extension; sources that share
    one (case-insensitively: macOS and Windows folders) get as many parent folder names in front as it takes
    ("a_talk", "b_talk"), and files of one folder that differ only in extension keep it ("talk.wav", "talk.mp3").
    stdin is "stdin"."""
    paths = [None if s == "-" else os.path.abspath(s) for s in sources]
    folders = [[] if p is None else [f for f in os.path.dirname(p).split(os.sep) if f] for p in paths]
    level, with_ext = [0] * len(sources), [False] * len(sources)

    def key(i: int) -> str:
        if paths[i] is None:
            return "stdin"
        name = os.path.basename(paths[i])
        return "_".join(folders[i][len(folders[i]) - level[i]:] + [name if with_ext[i] else os.path.splitext(name)[0]])

    for _ in range(256):  # each round lengthens the clashing keys; distinct paths stop clashing by their full path
        groups = defaultdict(list)
        for i in range(len(sources)):
            groups[key(i).casefold()].append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            break
        for g in clashes:
            if len({os.path.dirname(paths[i] or "") for i in g}) == 1 and not all(with_ext[i] for i in g):
                for i in g:
                    with_ext[i] = True
            else:
                for i in g:
                    level[i] = min(level[i] + 1, len(folders[i]))
    keys, seen = [key(i) for i in range(len(sources))], defaultdict(int)
    for i, k in enumerate(keys):  # only paths that differ in where "_" and "/" stand can clash to the end
        seen[k.casefold()] += 1
        keys[i] = k if seen[k.casefold()] == 1 else f"{k}-{seen[k.casefold()]}"
    by_stem = defaultdict(list)
    for i, source in enumerate(sources):
        by_stem[key(i) if paths[i] is None else os.path.splitext(os.path.basename(source))[0].casefold()].append(i)
    notes = [f"{len(g)} inputs are named {os.path.splitext(os.path.basename(sources[g[0]]))[0]!r}; their outputs are "
             f"{', '.join(keys[i] + '.*' for i in g)}" for g in by_stem.values() if len(g) > 1]
    return keys, notes


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_intermixed_args(argv)  # inputs may come after options too, as a shell glob puts them
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.word_timestamps and args.mode == "sequential":
        raise ValueError("--word-timestamps needs --mode vad (sequential decoding gives segment times only)")
    if args.audio.count("-") > 1:
        raise ValueError("- (stdin) can be given only once")
    sources, problems = collect_inputs(args.audio)
    stems, notes = output_stems(sources)
    try:  # an unwritable output folder fails now, not after the first transcription
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {args.output_dir} ({e.strerror or e})") from e
    from accelerate import PartialState

    from ..conversion import resolve_model

    model = resolve_model(args.model)  # a bad name or folder is one line now, before any input is read
    state = PartialState(cpu=args.device == "cpu")  # under a launcher: this process's rank and device
    if "-" in sources and state.num_processes > 1:
        raise ValueError("- (stdin) cannot be split between processes; run it without a launcher")
    # Every process sees the same sorted list, so the shares are disjoint and a resumed run re-splits what is left.
    with state.split_between_processes(list(zip(sources, stems))) as share:
        share = list(share)
    verbose = not args.quiet and state.is_main_process
    if verbose:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    failed = 0
    for arg, problem in problems if state.is_main_process else ():
        print(f"error: {arg}: {problem}", file=sys.stderr)
        failed += 1
    todo, skipped = [], 0
    for source, stem in share:
        stem_path = os.path.join(args.output_dir, stem)
        if (source != "-" and not args.overwrite
                and all(os.path.exists(f"{stem_path}.{fmt}") for fmt in args.output_format)):
            skipped += 1
        else:
            todo.append((source, stem_path))
    done, totals = 0, None
    t0 = time.perf_counter()
    if todo:
        device = args.device
        if device == "cuda" and state.device.type == "cuda":
            device = str(state.device)  # cuda:<local rank> under a launcher
        done, failed_here, totals = _transcribe_all(todo, model, device, args, progress=verbose)
        failed += failed_here
    if verbose or (not args.quiet and state.num_processes > 1):
        prefix = f"process {state.process_index + 1}/{state.num_processes}: " if state.num_processes > 1 else ""
        line = f"{prefix}{done} transcribed, {skipped} skipped (outputs exist), {failed} failed"
        if totals:
            wall = time.perf_counter() - t0 - totals["load"]
            speed = f"{totals['audio'] / wall:.1f}x faster than real time, " if totals["audio"] and wall > 0 else ""
            line += (f"; {totals['audio']:.1f} s of audio in {wall:.1f} s ({speed}model load {totals['load']:.1f} s "
                     f"more); loop-guard fallbacks {totals['fallbacks']}, still repetitive {totals['loops']}")
        print(f"{line}; outputs in {args.output_dir}", file=sys.stderr)
    return 1 if failed else 0


def _transcribe_all(todo, model, device, args, progress: bool):
    """Transcribe each (source, stem path) of `todo` with one model; (done, failed, totals)."""
    from tqdm.auto import tqdm
    from transformers.utils import logging as transformers_logging

    from ..audio import SAMPLING_RATE, AudioError
    from ..conversion import first_line
    from ..transcription.audio_io import load_audio, probe_duration
    from ..transcription.engine import Transcriber
    from ..transcription.writers import write_outputs

    transformers_logging.disable_progress_bar()  # the weights' loading bar; this command has its own
    start = time.perf_counter()
    transcriber = Transcriber(model, device=device, dtype=args.dtype, batch_size=args.batch_size, mode=args.mode,
                              language=args.language, task=args.task, word_timestamps=args.word_timestamps)
    estimates = [0.0 if s == "-" else probe_duration(s) or 0.0 for s, _ in todo]
    bar = tqdm(total=sum(estimates), unit="s", disable=not progress, dynamic_ncols=True, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]")
    totals = {"audio": 0.0, "fallbacks": 0, "loops": 0, "load": time.perf_counter() - start}
    done = failed = 0
    for (source, stem_path), estimate in zip(todo, estimates):
        name = "stdin" if source == "-" else source
        try:
            audio = load_audio(source, name)
        except AudioError as e:
            tqdm.write(f"error: {e}", file=sys.stderr)
            bar.total -= estimate
            bar.refresh()
            failed += 1
            continue
        seconds = len(audio) / SAMPLING_RATE
        bar.total += seconds - estimate  # the header's figure, corrected now that the samples are counted
        finished = 0.0

        def advance(step: float) -> None:  # seconds of this recording just finished
            nonlocal finished
            step = max(0.0, min(step, seconds - finished))
            finished += step
            bar.update(step)

        try:
            result = transcriber.transcribe(audio, on_progress=advance)
            write_outputs(result, stem_path, args.output_format)
        except Exception as e:  # noqa: BLE001 - one recording's failure (out of memory, a full disk) spares the rest
            tqdm.write(f"error: {name}: {first_line(e)}", file=sys.stderr)
            failed += 1
            continue
        finally:
            bar.update(seconds - finished)
            finished = seconds
        done += 1
        totals["audio"] += seconds
        totals["fallbacks"] += result.fallbacks
        totals["loops"] += result.loops
    bar.close()
    return done, failed, totals


if __name__ == "__main__":  # accelerate launch -m liteasr_hf.cli.transcribe
    from . import run

    run("transcribe", sys.argv[1:])
