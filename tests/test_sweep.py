"""The sweep on a tiny random model: one table row per grid point, both PNGs written."""

import json

import numpy as np

from liteasr_hf.audio import Clip
from liteasr_hf.calibration import Compressor
from liteasr_hf.evaluation.sweep import run_sweep, sensitivity_method, sweep_markdown, theta_method
from modeling_utils import tiny_audio, tiny_processor, tiny_whisper

PNG = b"\x89PNG\r\n\x1a\n"


def test_sweep_writes_table_and_plots(tmp_path):
    model = tiny_whisper(encoder_ffn_dim=256)
    processor = tiny_processor(str(tmp_path / "proc"))
    clips = [Clip(f"c{i}", tiny_audio(i, 0.3 + 0.1 * i), "a b c", "synthetic") for i in range(6)]
    stats_path = str(tmp_path / "stats.safetensors")
    compressor = Compressor(model, processor, clips[:4], batch_size=4, save_stats=stats_path, progress=False)
    methods = [theta_method(["a", (0.9, 0.9)]), sensitivity_method([0.9, 0.8], name="target size"),
               sensitivity_method([0.85], name="sensitivity"),
               sensitivity_method([0.85], refine=dict(steps=2, kl=1.0), name="sensitivity + refinement")]
    rows = run_sweep(compressor, methods, [("synthetic", clips[4:])], str(tmp_path / "out"), name="tiny", progress=False,
                     max_new_tokens=8)
    assert [(r["method"], r["label"]) for r in rows] == [
        ("dense", "tiny"), ("θ rule (padding weight 0.5)", "a"), ("θ rule (padding weight 0.5)", "0.9/0.9"),
        ("target size", "90%"), ("target size", "80%"), ("sensitivity", "85%"), ("sensitivity + refinement", "85%")]
    assert all(r["size"] <= s + 1e-9 for r, s in zip(rows[3:], (0.9, 0.8, 0.85, 0.85))) and rows[0]["size"] == 1.0
    assert rows[5]["low_rank_config"] == rows[6]["low_rank_config"]  # same gains (measured once, shared), same ranks
    assert list(compressor._gains) == [0.5]  # measured once for every sensitivity curve
    assert rows[6]["refine"]["steps"] == 2 and rows[6]["refine"]["initial"] > 0  # refinement is recorded in the point
    assert len(json.load(open(tmp_path / "out" / "sweep.json"))) == 7
    assert sum(line.startswith("| ") for line in open(tmp_path / "out" / "sweep.md")) == 8  # header + 7 rows
    # Per-clip errors are kept, so every point's Δ to dense carries its paired-bootstrap interval.
    assert all(sorted(r["per_clip"]) == ["c4", "c5"] for r in rows)
    table = open(tmp_path / "out" / "sweep.md").read().splitlines()
    assert table[2].split("|")[7].strip() == "" and all(line.split("|")[7].strip().count("(") == 1 for line in table[3:])
    older = [rows[0], {k: v for k, v in rows[1].items() if k != "per_clip"}]  # a point scored before per-clip errors were kept
    assert sweep_markdown(older).splitlines()[3].split("|")[7].strip().count("(") == 0
    for png in ("pareto.png", "ranks.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000
    # Statistics were saved; a second compressor resumes from them without new windows.
    again = Compressor(model, processor, clips[:4], resume_stats=[stats_path], progress=False)
    assert again.statistics().seen == compressor.statistics().seen
    assert np.allclose(again.statistics().frames()["real"], compressor.statistics().frames()["real"])


def test_refined_curve_names_list_changed_arguments():
    """A curve's name lists the refine settings that differ from CompressionConfig's defaults, numbers and strings alike."""
    name = sensitivity_method([0.8], refine=dict(steps=300, lr=3e-5, kl=1, warmup=0)).name
    assert name == "sensitivity allocation + 300 refinement steps (lr 3e-05, kl 1)"
