"""A wheel built from this repository, installed in a fresh virtual environment, runs the installed `liteasr-hf
calibrate` command on the bundled tiny.en and writes a complete checkpoint with its model card: nothing it needs may
live only in the checkout (the card template once did)."""

import glob
import json
import os
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_installed_wheel_calibrates(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), ROOT])
    (wheel,) = glob.glob(str(tmp_path / "dist" / "liteasr_hf-*.whl"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    # The dependencies (torch, transformers, ...) come from this environment's site-packages, appended after the new
    # environment's own; its editable install of liteasr_hf is not (a .pth file's own .pth files are not processed).
    site = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel])
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([str(py), "-c", "import liteasr_hf; print(liteasr_hf.__file__)"], cwd=work, env=env).stdout.strip()
    assert where.startswith(str(venv)), where
    out = work / "lite"
    run([str(venv / "bin" / "liteasr-hf"), "calibrate", "--model", "bundled/whisper-tiny.en", "--num-clips", "3",
         "--output-dir", str(out), "--no-progress"], cwd=work, env={**env, "HF_HUB_OFFLINE": "1"})
    for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "calibration.json",
              "modeling_lite_whisper.py", "normalizer.json"):
        assert (out / f).exists(), f
    card = (out / "README.md").read_text()
    assert "| layer | q_proj" in card and "liteasr-hf calibrate --model bundled/whisper-tiny.en" in card
    info = json.loads((out / "calibration.json").read_text())
    assert info["calibration"]["clips"] == 3 and info["size"]["fraction"] <= 0.8
