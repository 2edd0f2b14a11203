"""Every script's `--help` runs (no network, no model loading) and gives every option a line of help."""

import os
import subprocess
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


@pytest.mark.parametrize("script", sorted(f for f in os.listdir(SCRIPTS) if f.endswith(".py")))
def test_help_explains_every_option(script):
    out = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(default: None)" not in out.stdout
    # Options sit at a 2-space indent with their help on the same line or wrapped below at a deeper one; an
    # option without help is followed directly by the next option, a blank line or a group title.
    lines = out.stdout.splitlines() + [""]
    options = [i for i, line in enumerate(lines) if line.startswith("  -") and not line.startswith("   ")]
    indent = lambda line: len(line) - len(line.lstrip()) if line.strip() else 0  # noqa: E731
    bare = [lines[i].strip() for i in options if len(lines[i].split()) <= 2 and indent(lines[i + 1]) <= 2]
    assert len(options) >= 3 and bare == [], bare


@pytest.mark.parametrize("script", ["calibrate.py", "evaluate.py", "sweep.py"])
def test_a_bad_model_folder_is_one_line_naming_it(script, tmp_path):
    """No traceback for bad input: `error: ...` naming the folder, and a non-zero exit."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), "--model", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"error: {tmp_path} holds no config.json" in out.stderr


@pytest.mark.parametrize("script", ["calibrate.py", "evaluate.py", "sweep.py"])
@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-org/no-such-model"], "error: cannot load model 'no-such-org/no-such-model': not a bundled name"),
    (["--model", "bundled/whisper-tiny.en", "--dataset", "/no/such/folder"], "error: no dataset folder /no/such/folder"),
    (["--model", "bundled/whisper-tiny.en", "--dataset", "no-such-org/no-such-set"],
     "error: no-such-org/no-such-set: not a local folder, and not a Hub dataset reachable now"),
], ids=["hub-model", "dataset-folder", "hub-dataset"])
def test_offline_names_the_model_or_dataset_it_cannot_reach(script, args, message, tiny_en_path):
    """Offline (as here), a Hub id or a mistyped path is one line naming it, not the loader's traceback."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert message in out.stderr, out.stderr[-2000:]


def test_results_paths_are_checked_before_the_work(tmp_path):
    """A results path that cannot be written, or a --model-card folder calibrate.py did not write, is named at once:
    before, each failed with a traceback after all the transcribing or timing."""
    (tmp_path / "file").write_text("")
    for script, args, message in (("evaluate.py", ["--output", str(tmp_path / "file" / "e.json")], "cannot create its folder"),
                                  ("evaluate.py", ["--model-card", str(tmp_path)], "no calibration.json there"),
                                  ("benchmark.py", ["--json", str(tmp_path / "file" / "b.json")], "cannot create its folder")):
        out = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr and message in out.stderr, out.stderr[-2000:]
