"""The `liteasr-hf` command line: every command's `--help` runs (no network, no model loading) and explains every
option; bad input is one `error:` line; the checkout's wrappers in scripts/ run the same commands."""

import argparse
import importlib.util
import os
import subprocess
import sys

import pytest

from liteasr_hf.cli import COMMANDS, command_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
# The console script pip installs beside this interpreter (`pip install -e .` in the venv).
LITEASR = os.path.join(os.path.dirname(sys.executable), "liteasr-hf")
# Top-level modules the package (or its commands) imports: a file of that name in scripts/ would shadow it when a
# wrapper runs as `python scripts/<name>.py`, since Python puts the script's folder first on sys.path.
LIBRARIES = ("evaluate", "transformers", "datasets", "torch", "accelerate", "jiwer", "safetensors", "soundfile",
             "numpy", "triton", "liteasr_hf", "huggingface_hub", "tokenizers", "ctranslate2", "faster_whisper")


def command(name):
    """pytest.param for a command; calibrate and sweep are skipped until their modules land in liteasr_hf/cli/."""
    module = f"liteasr_hf.cli.{COMMANDS[name][0]}"
    missing = name in ("calibrate", "sweep") and importlib.util.find_spec(module) is None
    return pytest.param(name, id=name, marks=pytest.mark.skipif(
        missing, reason=f"{module} does not exist yet (the move of scripts/{COMMANDS[name][0]}.py is in progress)"))


def liteasr(*args, **kwargs):
    assert os.path.isfile(LITEASR), f"{LITEASR} missing: run `pip install -e .` in this venv"
    kwargs.setdefault("timeout", 300)
    return subprocess.run([LITEASR, *args], capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("name", [command(n) for n in COMMANDS])
def test_help_explains_every_option(name):
    parser = command_module(name).build_parser()
    assert isinstance(parser, argparse.ArgumentParser) and parser.prog == f"liteasr-hf {name}"
    out = liteasr(name, "--help", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: liteasr-hf {name}"), out.stdout[:200]
    assert "(default: None)" not in out.stdout
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    assert len(options) >= 3, options
    for action in parser._actions:
        long = [s for s in action.option_strings if s.startswith("--")]
        if not long and action.option_strings:
            continue  # short-only options (none so far)
        label = long[0] if long else action.dest
        assert (action.help or "").strip(), f"{name} {label}: no help text"
        for s in long:
            assert s in out.stdout, f"{name}: {s} missing from --help"


@pytest.mark.parametrize("args", [[], ["no-such-command"]], ids=["no-command", "unknown-command"])
def test_no_or_unknown_command_is_usage_and_status_2(args):
    out = liteasr(*args, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.startswith("usage: liteasr-hf <command>")
    assert all(name in out.stderr for name in COMMANDS)
    if args:
        assert "error: unknown command 'no-such-command'" in out.stderr


def test_a_wrapper_script_runs_its_command():
    out = subprocess.run([sys.executable, os.path.join(SCRIPTS, "evaluate_wer.py"), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage: liteasr-hf evaluate") and "--long-form" in out.stdout


def test_no_script_shadows_a_library():
    """`python scripts/X.py` puts scripts/ first on sys.path: X.py must not be named like a module anything imports."""
    names = sorted(f[:-3] for f in os.listdir(SCRIPTS) if f.endswith(".py"))
    assert not set(names) & set(LIBRARIES), sorted(set(names) & set(LIBRARIES))
    # Nor like any other importable top-level module (the standard library's included); scripts/ is not on this
    # process's sys.path, so whatever find_spec finds lies elsewhere.
    assert [n for n in names if importlib.util.find_spec(n) is not None] == []


@pytest.mark.parametrize("name", [command(n) for n in ("calibrate", "evaluate", "sweep")])
def test_a_bad_model_folder_is_one_line_naming_it(name, tmp_path):
    """No traceback for bad input: `error: ...` naming the folder, and exit status 2."""
    out = liteasr(name, "--model", str(tmp_path), env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"error: {tmp_path} holds no config.json" in out.stderr


@pytest.mark.parametrize("name", [command(n) for n in ("calibrate", "evaluate", "sweep")])
@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-org/no-such-model"], "error: cannot load model 'no-such-org/no-such-model': not a bundled name"),
    (["--model", "bundled/whisper-tiny.en", "--dataset", "/no/such/folder"], "error: no dataset folder /no/such/folder"),
    (["--model", "bundled/whisper-tiny.en", "--dataset", "no-such-org/no-such-set"],
     "error: no-such-org/no-such-set: not a local folder, and not a Hub dataset reachable now"),
], ids=["hub-model", "dataset-folder", "hub-dataset"])
def test_offline_names_the_model_or_dataset_it_cannot_reach(name, args, message, tiny_en_path):
    """Offline (as here), a Hub id or a mistyped path is one line naming it, not the loader's traceback."""
    out = liteasr(name, *args, env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert message in out.stderr, out.stderr[-2000:]


def test_results_paths_are_checked_before_the_work(tmp_path):
    """A results path that cannot be written, or a --model-card folder calibrate did not write, is named at once:
    before, each failed with a traceback after all the transcribing or timing."""
    (tmp_path / "file").write_text("")
    for name, args, message in (("evaluate", ["--output", str(tmp_path / "file" / "e.json")], "cannot create its folder"),
                                ("evaluate", ["--model-card", str(tmp_path)], "no calibration.json there"),
                                ("benchmark", ["--json", str(tmp_path / "file" / "b.json")], "cannot create its folder")):
        out = liteasr(name, *args, timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr and message in out.stderr, out.stderr[-2000:]
