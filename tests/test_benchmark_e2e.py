"""scripts/benchmark_e2e.py on real tiny.en and three shipped clips: every row runs and scores (no timing asserts)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


@pytest.mark.slow
def test_end_to_end_rows_against_dense(tmp_path, tiny_en_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)
    lite = tmp_path / "lite"
    run = lambda *a: subprocess.run([sys.executable, *a], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = run(os.path.join(SCRIPTS, "calibrate.py"), "--model", "bundled/whisper-tiny.en", "--context-only", "--output-dir", str(lite))
    assert out.returncode == 0, out.stderr[-3000:]
    result = tmp_path / "e2e.json"
    out = run(os.path.join(SCRIPTS, "benchmark_e2e.py"), "--dense", "bundled/whisper-tiny.en", "--lite", str(lite),
              "--rows", "dense/fp32/full", "lite/bf16/dynamic", "lite/cpu/dynamic", "--batch", "1", "2", "--limit", "3",
              "--rounds", "1", "--json", str(result))
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(result.read_text())
    rows = {r["row"]: r for r in data["results"]}
    want = {f"{spec} b{b} generate" for spec in ("dense/fp32/full", "lite/bf16/dynamic", "lite/cpu/dynamic") for b in (1, 2)}
    try:
        import faster_whisper  # noqa: F401

        want.add("faster-whisper int8 b1")
    except ImportError:
        pass
    assert set(rows) == want
    assert rows["dense/fp32/full b1 generate"]["speedup"] == 1.0 and rows["dense/fp32/full b2 generate"]["speedup"] == 1.0
    for r in rows.values():
        assert r["wall_s"] > 0 and len(r["texts"]) == 3 and all(r["texts"]) and 0 <= r["wer"] < 0.5, r["row"]
        assert r["delta_wer"].startswith(("+", "-")) and "(" in r["delta_wer"]  # with its paired interval
        assert r["row"].startswith("faster") or 0 < r["encoder_share"] < 1
    assert data["settings"]["buckets"] == [10.0, 15.0, 20.0] and data["settings"]["clips"] == 3
    assert "| dense/fp32/full b1 generate |" in out.stdout


def test_bad_row_is_named(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(SCRIPTS, "benchmark_e2e.py"), "--rows", "dense/int4/full"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "dense/int4/full" in out.stderr
    out = subprocess.run([sys.executable, os.path.join(SCRIPTS, "benchmark_e2e.py"), "--rows", "lite/fp32/full"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "needs --lite" in out.stderr
