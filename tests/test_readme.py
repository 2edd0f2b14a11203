"""The README's Python compression example runs exactly as written (bundled real tiny.en, shipped clips, offline)."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def readme_example(section: str) -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, re.S)
    assert len(blocks) == 1, f"README section {section!r} should hold one python block, has {len(blocks)}"
    return blocks[0]


def test_compress_in_python_example(tmp_path):
    code = readme_example("Compress in Python")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = next((tmp_path / "outputs").iterdir())
    for f in ("config.json", "model.safetensors", "calibration.json", "README.md", "generation_config.json", "tokenizer.json"):
        assert (out / f).exists(), f
    info = json.loads((out / "calibration.json").read_text())
    assert info["size"]["fraction"] <= info["config"]["target_size"]
    assert "of the dense encoder" in r.stdout
