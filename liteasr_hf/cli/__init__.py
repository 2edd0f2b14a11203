"""`liteasr-hf <command>`: the package's command line. Each command is a module here with `build_parser()` and
`main(argv) -> int`; `scripts/*.py` are thin wrappers over the same modules for a checkout.

Bad input (a model folder, a dataset, an option value) raises ValueError anywhere below; `run` prints it as one
`error: ...` line on stderr and exits with status 2, the status argparse gives a bad option.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "calibrate": ("calibrate", "compress a Whisper encoder from calibration audio; write a lite checkpoint"),
    "evaluate": ("evaluate", "WER of Whisper / lite Whisper models on real speech, with paired intervals"),
    "sweep": ("sweep", "calibrate once, compress at many sizes, score each, plot the frontier"),
    "benchmark": ("benchmark", "encoder speed: dense vs lite, attention kernels, CUDA graphs"),
    "benchmark-e2e": ("benchmark_e2e", "end-to-end transcription speed and WER against dense and faster-whisper"),
    "convert": ("convert", "a CTranslate2 (faster-whisper) folder to a Transformers Whisper folder"),
    "transcribe": ("transcribe", "transcribe recordings of any length to txt / srt / vtt / json"),
}


def command_module(name: str):
    return importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")


def run(name: str, argv=None) -> None:
    """Run one command and exit with its status; bad input is one `error:` line, status 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        status = command_module(name).main(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 2
    finally:
        _leave_process_group()
    sys.exit(status or 0)


def _leave_process_group() -> None:
    """Under a launcher (torchrun, accelerate launch) a process that exits with its gloo group still up can abort in
    the group's teardown ("terminate called without an active exception"), and the launcher then kills the others.
    A process whose share is done (calibrate's statistics, evaluate's transcripts) leaves early, so every command
    leaves the group before it exits. Local: no collective call, so the main process may still be working."""
    dist = sys.modules.get("torch.distributed")  # only when the command imported torch
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv=None) -> None:
    """The `liteasr-hf` entry point."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {n:<{width}}  {help}" for n, (_, help) in COMMANDS.items()]
        print("usage: liteasr-hf <command> [options]    (liteasr-hf <command> --help for its options)\n\ncommands:\n"
              + "\n".join(lines), file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    run(argv[0], argv[1:])
