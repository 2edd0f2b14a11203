"""`liteasr-hf benchmark` runs on the CPU with tiny settings and writes well-formed JSON (no timing asserts)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The installed command (`pip install -e .`), beside this interpreter; scripts/benchmark.py wraps the same module.
BENCHMARK = [os.path.join(os.path.dirname(sys.executable), "liteasr-hf"), "benchmark"]


def run_benchmark(tmp_path, *extra):
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    # CPU users get the PyTorch reference path; the interpreted kernel would only make this slow.
    env.pop("TRITON_INTERPRET", None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [*BENCHMARK, "--device", "cpu", "--model", "tiny", "--batch", "1", "--frames", "200",
           "--warmup", "0", "--iters", "1", "--json", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_benchmark_cpu_json(tmp_path):
    result, stdout = run_benchmark(tmp_path, "--core-ranks", "16", "48", "--core-shape", "1", "2", "64")
    rows = result["encoder"]
    variants = {r["variant"] for r in rows}
    assert {"dense", "lite", "lite-sdpa", "dense-contig"} <= variants
    assert next(r for r in rows if r["variant"] == "dense-contig")["params_fraction"] == 1.0  # nothing compressed
    assert all(r["ms"] > 0 and r["ratio"] > 0 and r["mode"] == "eager" and r["batch"] == 1 for r in rows)
    assert next(r for r in rows if r["variant"] == "dense")["ratio"] == 1.0
    lite = next(r for r in rows if r["variant"] == "lite")
    assert 0 < lite["params_fraction"] < 1  # c-like ranks shrink the encoder
    assert result["weights"].startswith("random")
    assert len(result["low_rank_config"]["tiny"]) == 4  # one dict per tiny encoder layer
    core = result["attention_core"]
    assert {r["rank"] for r in core} >= {16, 48}
    assert all(r["ms"] > 0 and r["ratio"] > 0 for r in core)
    assert all(r["impl"] in ("sdpa", "reference") for r in core)  # CPU without the interpreter: no kernel
    assert "| dense |" in stdout and "speedup vs dense" in stdout


def test_benchmark_rank_profile_from_checkpoint_config(tmp_path):
    ranks = [dict(q_proj=32, k_proj=32, v_proj=48, fc1=64) for _ in range(2)]
    cfg = dict(model_type="lite-whisper", d_model=128, encoder_layers=2, encoder_attention_heads=2,
               encoder_ffn_dim=256, num_mel_bins=80, low_rank_config=ranks)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    result, _ = run_benchmark(tmp_path, "--ranks", str(tmp_path / "ckpt"), "--no-naive", "--core-ranks")
    assert result["low_rank_config"]["checkpoint"] == ranks
    assert {r["variant"] for r in result["encoder"]} == {"dense", "lite"}
    assert result["attention_core"] == []


def test_benchmark_help():
    from liteasr_hf.cli.benchmark import build_parser

    text = build_parser().format_help()  # the help itself runs as a command in test_scripts_help.py
    assert text.startswith("usage: liteasr-hf benchmark") and "--ranks" in text and "c-like" in text


def test_benchmark_names_a_missing_checkpoint(tmp_path):
    proc = subprocess.run([*BENCHMARK, "--device", "cpu", "--ranks", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: --ranks: expected" in proc.stderr and "missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_benchmark_uniform_ranks_and_profile(tmp_path):
    result, stdout = run_benchmark(tmp_path, "--ranks", "q_proj=16,k_proj=16,fc1=64", "--profile", "--no-naive",
                                   "--core-ranks")
    assert result["low_rank_config"]["tiny"] == [dict(q_proj=16, k_proj=16, fc1=64)] * 4
    profiles = {p["variant"]: p for p in result["profiles"]}
    assert set(profiles) == {"dense", "lite"}
    for p in profiles.values():
        assert p["ms_by_category"]["gemm"] > 0 and all(v >= 0 for v in p["ms_by_category"].values())
        assert p["top"] and all(k["category"] in ("attention", "gemm", "conv", "other") for k in p["top"])
    assert "Profile (eager" in stdout


def test_benchmark_rejects_unknown_projection(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([*BENCHMARK, "--device", "cpu", "--ranks", "q_proj=16,gate=8", "--json", ""],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "error: --ranks: unknown projection(s) ['gate']" in proc.stderr
    assert "Traceback" not in proc.stderr
