"""`liteasr-hf benchmark-e2e --long`: the summary and table on synthetic results, the rows' turns, argument checks,
a failing row's worker, and one real run of cheap rows on a short recording with the real tiny.en."""

import csv
import json
import os

import numpy as np
import pytest

from liteasr_hf.audio import BUNDLED_CLIPS, SAMPLING_RATE, Clip
from liteasr_hf.evaluation import long_audio as la


def clip(id, seconds, text, language):
    return Clip(id, np.zeros(int(seconds * SAMPLING_RATE), dtype=np.float32), text, language=language)


def test_summary_ratios_wer_loops_and_table():
    recordings = [clip("a", 2, "the cat sat on the mat", "en"), clip("b", 1, "hello world", "en"), clip("c", 1, "guten tag welt", "de")]
    refs = [c.text for c in recordings]

    def row(walls, texts, extra=None, round2=None):
        outputs = [{"text": t, **(extra[i] if extra else {})} for i, t in enumerate(texts)]
        again = [{"text": t} for t in (round2 or texts)]
        return {"walls": walls, "outputs": [outputs, again]}

    raw = {
        "dense-sequential": row([[2, 1, 1], [3, 1, 2]], refs),
        "lite-transcribe": row([[1, 0.5, 0.5], [1, 1, 1]], ["the cat sat on the mat", "hello hello hello hello world", "guten tag welt"],
                               extra=[{"fallbacks": 0, "engine_loops": 0}, {"fallbacks": 2, "engine_loops": 1}, {"fallbacks": 1, "engine_loops": 0}]),
        "fw-batched": row([[3, 3, 2], [1, 1, 1]], ["the cat sat on a mat", "hello world", "guten tag welt guten tag welt"],
                          round2=["the cat sat on the mat", "hello world", "guten tag welt guten tag welt"]),
    }
    results = la.summarize(raw, recordings)
    by = {r["row"]: r for r in results}
    assert [r["row"] for r in results] == list(raw)
    dense, lite, fw = by["dense-sequential"], by["lite-transcribe"], by["fw-batched"]
    # best (min) and median of the round totals; RTF over 4 s of audio; speed-ups against dense and fw-batched
    assert (dense["wall_s"], dense["wall_median_s"], lite["wall_s"], lite["wall_median_s"], fw["wall_s"]) == (4, 5, 2, 2.5, 3)
    assert (dense["rtf"], lite["rtf"], fw["rtf"]) == (1.0, 0.5, 0.75)
    assert (dense["x_dense_sequential"], lite["x_dense_sequential"], fw["x_dense_sequential"]) == (1.0, 2.0, 4 / 3)
    assert (dense["x_fw_batched"], lite["x_fw_batched"], fw["x_fw_batched"]) == (0.75, 1.5, 1.0)
    # WER pooled over 11 words, English over 8; loops: a repeated 1-gram (lite b), 6 words for 3 (fw c)
    assert dense["wer"] == 0 and lite["wer"] == pytest.approx(3 / 11) and fw["wer"] == pytest.approx(4 / 11)
    assert lite["wer_en"] == pytest.approx(3 / 8) and fw["wer_en"] == pytest.approx(1 / 8)
    assert [x["loop"] for x in lite["recordings"]] == [False, True, False] and lite["loops"] == 1
    assert [x["loop"] for x in fw["recordings"]] == [False, False, True] and fw["loops"] == 1
    assert lite["delta_wer"].startswith("+27.27 (") and fw["delta_wer"].startswith("+36.36 (")  # with the paired interval
    assert dense["delta_wer"] == "+0.00 (+0.00, +0.00)"
    assert (dense["fallbacks"], lite["fallbacks"], fw["fallbacks"]) == (None, 3, None)
    rec = fw["recordings"][0]
    assert rec["wall_s"] == 1 and rec["walls"] == [3, 1] and rec["errors"] == 1 and rec["words"] == 6 and rec["wer"] == 1 / 6
    assert not rec["same_text_every_round"] and all(x["same_text_every_round"] for x in lite["recordings"])
    assert lite["recordings"][1]["fallbacks"] == 2 and lite["recordings"][1]["engine_loops"] == 1
    json.dumps(results)  # plain JSON types throughout

    settings = {"recordings": [{"id": c.id, "language": c.language, "seconds": c.seconds} for c in recordings],
                "audio_s": 4.0, "cpu": la.cpu_info(), "threads": 2, "versions": la.versions(), "rounds": 2}
    assert set(settings["cpu"]["flags"]) == set(la.CPU_FLAGS) and settings["cpu"]["model_name"]
    table = la.markdown(results, settings)
    assert "3 recordings (2 English), 4.0 s of audio" in table and "best (min) of 2 rounds" in table
    assert "| dense-sequential | 4.0 (5.0) | 1.000 | 1.00 | 0.75 | 0.00 | 0.00 | +0.00 (+0.00, +0.00) | 0 | — |" in table
    assert "| lite-transcribe | 2.0 (2.5) | 0.500 | 2.00 | 1.50 | 27.27 | 37.50 | +27.27 (" in table and table.count("| 1 | 3 |") == 1
    assert "| fw-batched | 16.7 | 0.0 | 100.0 * |" in table

    # without the reference or the peer rows, their columns are empty
    only = la.summarize({"lite-transcribe": raw["lite-transcribe"]}, recordings)[0]
    assert only["x_dense_sequential"] is None and only["x_fw_batched"] is None and only["delta_wer"] is None
    assert "| — | — |" in la.markdown([only], settings)


def test_rows_take_turns_recording_by_recording():
    """run_rounds: on recording j of round r the rows start at (j + r) mod rows; each call's wall comes back per row,
    round and recording, the rest of the worker's output beside it."""
    recordings = [clip("x", 1, "x", "en"), clip("y", 2, "y", "en")]
    calls = []

    def worker(name):
        def run(item):
            audio, language = item
            calls.append(name)
            return {"text": f"{name} {len(audio)} {language}", "wall_s": len(calls)}
        return run

    raw = la.run_rounds({"a": worker("a"), "b": worker("b")}, recordings, rounds=2, settle_s=0, progress=False)
    assert calls == ["a", "b", "b", "a", "b", "a", "a", "b"]
    assert raw["a"]["walls"] == [[1, 4], [6, 7]] and raw["b"]["walls"] == [[2, 3], [5, 8]]
    assert raw["b"]["outputs"][1][1] == {"text": f"b {2 * SAMPLING_RATE} en"}


def test_unknown_or_unavailable_rows_are_named():
    from liteasr_hf.cli.benchmark_e2e import parse_args

    with pytest.raises(ValueError) as e:
        parse_args(["--long", "--rows", "dense-sequential", "fw-beam"])
    assert "'fw-beam'" in str(e.value) and all(r in str(e.value) for r in la.ROWS)
    with pytest.raises(ValueError, match="lite-sequential need --lite"):
        parse_args(["--long", "--rows", "lite-sequential"])
    with pytest.raises(ValueError, match="named twice"):
        la.check_rows(["fw-batched", "fw-batched"])
    args = parse_args(["--long", "--lite", "x", "--rows", "lite-transcribe", "fw-batched", "--languages", "en"])
    assert args.rows == ["lite-transcribe", "fw-batched"] and args.languages == ["en"] and args.json.endswith("e2e-long.json")
    with pytest.raises(SystemExit):
        parse_args(["--long", "--rounds", "0"])


def test_failing_row_raises_with_the_workers_traceback():
    from liteasr_hf.evaluation.end_to_end import Worker

    with pytest.raises(RuntimeError) as e:
        Worker(la.row_runner, ("dense-sequential", "/nonexistent/model", 1), "dense-sequential")
    message = str(e.value)
    assert message.startswith("the dense-sequential worker failed:") and "Traceback (most recent call last)" in message
    assert "no model folder /nonexistent/model" in message and "row_runner" in message


def test_smoke_run_on_a_short_recording(tmp_path, tiny_en_path, capsys):
    """Two shipped clips joined into one recording, transcribed by the real tiny.en in the reference row's worker
    (one thread: on a busy 2-core machine two torch threads ran this 20x slower, each waiting on the other)."""
    import soundfile as sf

    from liteasr_hf.cli.benchmark_e2e import main

    names = ["librivox_sense_and_sensibility_01_0870.flac", "jfk_inaugural_1961.flac"]
    with open(os.path.join(BUNDLED_CLIPS, "metadata.csv"), newline="", encoding="utf-8") as f:
        texts = {r["file_name"]: r["transcription"] for r in csv.DictReader(f)}
    audio = [sf.read(os.path.join(BUNDLED_CLIPS, n), dtype="float32")[0] for n in names]
    data = tmp_path / "long"
    data.mkdir()
    sf.write(data / "joined.flac", np.concatenate([audio[0], np.zeros(SAMPLING_RATE // 2, np.float32), audio[1]]), SAMPLING_RATE)
    with open(data / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["file_name", "transcription", "language"], ["joined.flac", " ".join(texts[n] for n in names), "en"]])
    out = tmp_path / "long.json"
    assert main(["--long", "--dataset", str(data), "--dense", "bundled/whisper-tiny.en", "--rows", "dense-sequential",
                 "--rounds", "1", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["threads"] == 1 and result["settings"]["recordings"][0]["seconds"] == pytest.approx(18.6, abs=0.1)
    (r,) = result["results"]
    text = r["recordings"][0]["text"].lower()
    assert r["row"] == "dense-sequential" and r["wall_s"] > 0 and r["wer"] < 0.2 and r["loops"] == 0, r
    assert "dashwood" in text and text.endswith("your country.") and r["recordings"][0]["language"] == "en"
    assert r["x_dense_sequential"] == 1.0 and r["x_fw_batched"] is None and r["fallbacks"] is None
    assert "| dense-sequential |" in capsys.readouterr().out
