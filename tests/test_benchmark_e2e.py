"""`liteasr-hf benchmark-e2e` on real tiny.en and three shipped clips: every row runs and scores (no timing asserts)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
# The installed command (`pip install -e .`), beside this interpreter; scripts/benchmark_e2e.py wraps the same module.
BENCHMARK_E2E = [os.path.join(os.path.dirname(sys.executable), "liteasr-hf"), "benchmark-e2e"]


@pytest.mark.slow
def test_end_to_end_rows_against_dense(tmp_path, tiny_en_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)
    lite = tmp_path / "lite"
    run = lambda *a: subprocess.run(list(a), env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = run(sys.executable, os.path.join(SCRIPTS, "calibrate.py"), "--model", "bundled/whisper-tiny.en", "--context-only", "--output-dir", str(lite))
    assert out.returncode == 0, out.stderr[-3000:]
    result = tmp_path / "e2e.json"
    out = run(*BENCHMARK_E2E, "--dense", "bundled/whisper-tiny.en", "--lite", str(lite),
              "--rows", "dense/fp32/full", "lite/bf16/dynamic", "lite/cpu-int8/dynamic", "--batch", "1", "2", "--limit", "3",
              "--rounds", "1", "--json", str(result))
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(result.read_text())
    rows = {r["row"]: r for r in data["results"]}
    want = {f"{spec} b{b} generate" for spec in ("dense/fp32/full", "lite/bf16/dynamic", "lite/cpu-int8/dynamic") for b in (1, 2)}
    try:
        import faster_whisper  # noqa: F401

        want |= {"faster-whisper int8 b1", "faster-whisper int8 b2"}  # b2: CTranslate2's batch API
    except ImportError:
        pass
    assert set(rows) == want
    assert rows["dense/fp32/full b1 generate"]["speedup"] == 1.0 and rows["dense/fp32/full b2 generate"]["speedup"] == 1.0
    for r in rows.values():
        assert r["wall_s"] > 0 and len(r["texts"]) == 3 and all(r["texts"]) and 0 <= r["wer"] < 0.5, r["row"]
        assert r["delta_wer"].startswith(("+", "-")) and "(" in r["delta_wer"]  # with its paired interval
        assert r["row"].startswith("faster") or 0 < r["encoder_share"] < 1
    if "faster-whisper int8 b2" in rows:  # the batched peer decodes as the one-at-a-time one does (same windows, greedy)
        from liteasr_hf.evaluation.wer import normalize

        assert [normalize(t) for t in rows["faster-whisper int8 b2"]["texts"]] == [normalize(t) for t in rows["faster-whisper int8 b1"]["texts"]]
    assert data["settings"]["buckets"] == [15.0, 20.0] and data["settings"]["clips"] == 3
    assert "| dense/fp32/full b1 generate |" in out.stdout


def test_row_contexts_and_their_strides():
    from liteasr_hf.cli.benchmark_e2e import parse_args, row_context

    assert row_context("strided:4") == ("strided", 4) and row_context("full-strided") == ("full-strided", None)
    assert row_context("full") == ("full", None)
    for bad in ("dynamic:4", "strided:0", "strided:x", "windowed"):
        assert row_context(bad) is None
    assert parse_args(["--lite", "x", "--rows", "dense/fp32/full", "lite/cpu-bf16/full-strided:16"]).rows[1].endswith(":16")


def test_bad_row_is_named(tmp_path):
    out = subprocess.run([*BENCHMARK_E2E, "--rows", "dense/int4/full"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "dense/int4/full" in out.stderr
    out = subprocess.run([*BENCHMARK_E2E, "--rows", "lite/fp32/full"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "needs --lite" in out.stderr
    out = subprocess.run([*BENCHMARK_E2E, "--rows", "dense/fp32/dynamic:4"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "dense/fp32/dynamic:4" in out.stderr


def test_random_shape_rows(tmp_path):
    """--random-shape: random weights of a model's shapes, fixed tokens per clip, dense/lite x full/dynamic rows."""
    result = tmp_path / "random.json"
    out = subprocess.run([*BENCHMARK_E2E, "--random-shape", "tiny", "--tokens", "3", "--batch", "2", "--limit", "3",
                          "--rounds", "1", "--device", "cpu", "--json", str(result)], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(result.read_text())
    assert [r["row"] for r in data["results"]] == ["dense full b2", "dense dynamic b2", "lite full b2", "lite dynamic b2"]
    assert all(r["wall_s"] > 0 for r in data["results"]) and data["results"][0]["speedup"] == 1.0
    assert data["settings"]["tokens"] == 3 and data["settings"]["shape"] == "tiny"
    bad = subprocess.run([*BENCHMARK_E2E, "--random-shape", "huge"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "huge" in bad.stderr


def test_fixed_tokens_and_graphed_encoder():
    """Every clip decodes exactly the tokens asked for; the encoder split into its plan and its shape-static step
    (`encode(x, plan)`: what a CUDA graph captures) gives the forward's output, with the config's context and with
    per-call strided settings, and on CUDA the replayed graph gives it too. `in_context` runs the fixed-token runner
    on per-call settings, without the loop guard (every such row runs into its token limit)."""
    import numpy as np
    import torch
    from transformers import WhisperFeatureExtractor

    from liteasr_hf.cli.benchmark import rank_profile
    from liteasr_hf.evaluation.random_e2e import CUDAGraphEncoder, fixed_tokens_runner, in_context, random_lite, random_whisper

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rng = np.random.default_rng(0)
    audios = [0.1 * rng.standard_normal(int(16_000 * s)).astype(np.float32) for s in (2.0, 7.5)]
    fe = WhisperFeatureExtractor(feature_size=80)
    for device in devices:
        dense = random_whisper("tiny", device)
        lite = random_lite(dense, rank_profile("fraction:0.5", dense.config))
        lite.config.encoder_context_buckets = [10.0, 15.0, 20.0]
        feats = fe(audios, sampling_rate=16_000, return_tensors="pt", return_attention_mask=True)
        x, mask = feats.input_features.to(device), feats.attention_mask.to(device)
        with torch.no_grad():
            out = lite.generate(x, attention_mask=mask, min_new_tokens=5, max_new_tokens=5)
            # eos is suppressed until the 5th new token, so no row ends early and pads (random weights end soon)
            assert (out[:, -5:] != lite.generation_config.eos_token_id).all(), out
            want = lite.get_encoder()(x, attention_mask=mask).last_hidden_state
            assert want.shape[1] == 500  # the 10 s bucket: 7.5 s + 1 s margin
            strided = lite.get_encoder().context_settings().replace(padding_stride=4)  # per-call settings
            want_strided = lite.get_encoder()(x, attention_mask=mask, encoder_context=strided).last_hidden_state
            assert want_strided.shape[1] == 500 and not torch.equal(want_strided, want)
            with CUDAGraphEncoder(lite.get_encoder()) as graphs:
                for _ in range(2):  # capture, then replay
                    got = lite.get_encoder()(x, attention_mask=mask).last_hidden_state
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # same kernels, same order
                    got = lite.get_encoder()(x, attention_mask=mask, encoder_context=strided).last_hidden_state
                    torch.testing.assert_close(got, want_strided, rtol=1e-5, atol=1e-5)
            assert len(graphs.graphs) == (2 if device == "cuda" else 0)  # one per plan
        # in_context: the buckets as per-call settings (the config untouched), the fixed-token rows unguarded
        seen = []
        hook = lite.get_encoder().layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
        lite.config.encoder_context_buckets, fallbacks = None, lite.loop_guard.fallbacks
        run = in_context(lite, [10.0, 15.0, 20.0], 1.0, fixed_tokens_runner(lite, fe, 2, 3))
        assert run(audios) > 0
        hook.remove()
        assert seen == [500] and lite.loop_guard.fallbacks == fallbacks and lite.config.encoder_context_buckets is None


def test_rows_take_turns_chunk_by_chunk():
    """run_rows: every row sees every chunk of clips (shortest first, as `transcribe` batches), rows take turns within
    each chunk with the first row rotating, texts come back in the clips' order, and a round's encoder seconds are
    summed over its chunks."""
    from types import SimpleNamespace

    import numpy as np

    from liteasr_hf.evaluation import end_to_end as e2e

    lengths = [5, 1, 4, 2, 3]
    clips = [SimpleNamespace(audio=np.zeros(n), text=f"clip {i}") for i, n in enumerate(lengths)]
    calls = []

    def runner(name, box):
        def run(audios):
            calls.append((name, [len(a) for a in audios]))
            box.append(0.5)
            return [f"{name} {len(a)}" for a in audios], [False] * len(audios)
        return run

    rows = []
    for name in ("a", "b"):
        row = e2e.Row(name, None)
        row.run = runner(name, row.encoder_seconds)
        rows.append(row)
    e2e.run_rows(rows, clips, rounds=2, chunk=2, progress=False)
    chunks = [[1, 2], [3, 4], [5]]
    assert [c for name, c in calls if name == "a"] == chunks * 2 and [c for name, c in calls if name == "b"] == chunks * 2
    firsts = [calls[i][0] for i in range(0, len(calls), 2)]
    assert firsts == ["a", "b", "a", "b", "a", "b"]  # rotates per chunk and per round
    for row in rows:
        assert row.texts == [f"{row.label} {n}" for n in lengths]
        assert row.encoder_seconds == [1.5, 1.5] and len(row.walls) == 2


def test_faster_whisper_runs_in_a_worker_process_and_reports_its_failure(tmp_path):
    """The peer row runs in a process of its own (CTranslate2's runtime apart from torch's); a failure there is a
    RuntimeError here with the worker's traceback, not a hang."""
    pytest.importorskip("faster_whisper")  # the [bench] extra; `make test` installs it
    import multiprocessing

    from liteasr_hf.evaluation.end_to_end import faster_whisper_runner

    with pytest.raises(RuntimeError, match="faster-whisper worker failed"):
        faster_whisper_runner(str(tmp_path / "no-such-model"), "int8", 1, "en", 8)
    assert not multiprocessing.active_children()  # the worker has ended
