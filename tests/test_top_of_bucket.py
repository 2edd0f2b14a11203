"""`liteasr-hf benchmark-e2e --top-of-bucket`: the clips (speech-dev's calibration clips only, lengths at the top of
their bucket, the documented 134-clip recipe, rebuilt bit for bit) and one run of the real tiny.en as lite-whisper
(buckets 15 / 20 s) on a few of them: the table and the JSON's fields."""

import collections
import json
import os

import numpy as np
import pytest

from liteasr_hf.audio import SAMPLING_RATE as SR
from liteasr_hf.evaluation import top_of_bucket as tob


@pytest.fixture(scope="module")
def source(speech_dev):
    return tob.CalibrationSource(speech_dev)


def splits(speech_dev):
    with open(os.path.join(speech_dev, "split.json")) as f:
        split = json.load(f)
    return set(split["calibration"]), set(split["evaluation"])


def test_only_calibration_clips_are_read(speech_dev, monkeypatch):
    import liteasr_hf.audio

    read, decode = [], liteasr_hf.audio.decode
    monkeypatch.setattr(liteasr_hf.audio, "decode", lambda path, name: read.append(name) or decode(path, name))
    source = tob.CalibrationSource(speech_dev)
    calibration, evaluation = splits(speech_dev)
    assert set(read) == calibration and not set(read) & evaluation and len(read) == len(calibration) == 60
    entry = dict(tob.make_recipe(source)[0], files=[sorted(evaluation)[0]])
    with pytest.raises(ValueError, match="is not one of .* calibration clips"):
        tob.render(entry, source)  # a recipe naming an evaluation clip is refused, not read


def test_recipe_lands_at_the_top_of_each_bucket(speech_dev, source):
    recipe = tob.make_recipe(source)
    calibration, evaluation = splits(speech_dev)
    # docs/benchmarks.md's recipe: 134 clips, 70 at the 10 s bucket; its first clip
    assert len(recipe) == 134 and len({e["id"] for e in recipe}) == 134
    assert collections.Counter(e["bucket"] for e in recipe) == {10: 70, 15: 38, 20: 26}
    assert recipe[0]["id"] == "b10_range_00_clean" and recipe[0]["total"] == 131830 and recipe[0]["offsets"] == [0, 77050]
    assert recipe[0]["files"] == ["timit_dr1-fvmh0_si836.flac", "timit_dr2-faem0_si2022.flac"]
    assert {e["variant"] for e in recipe} == set(tob.VARIANTS) and {e["target"] for e in recipe} == set(tob.KINDS)
    for e in recipe:
        top = e["bucket"] - 1.0
        assert set(e["files"]) <= calibration and not set(e["files"]) & evaluation
        assert top - 1.0 <= e["total"] / SR <= top, e["id"]  # audio + margin fits the bucket, within 1 s of its top
        if e["target"] != "range":
            assert e["total"] == round((top - 0.02) * SR)
        lengths = [b - a for a, b in e["src"]] if "src" in e else [len(source.audio(f)) for f in e["files"]]
        assert e["offsets"][0] == e["lead_pad"] and e["offsets"][-1] + lengths[-1] + e["trail_pad"] == e["total"]
        assert all(o + n < nxt for o, n, nxt in zip(e["offsets"], lengths, e["offsets"][1:]))  # silence between
        if e["target"] == "tight":
            assert e["trail_pad"] == 0
    # other buckets and margins: longer buckets join more clips
    for e in tob.make_recipe(source, (12.5, 30), margin=1.5, seed=3):
        assert e["bucket"] - 2.5 <= e["total"] / SR <= e["bucket"] - 1.5
    with pytest.raises(ValueError, match="over the margin"):
        tob.make_recipe(source, (2,), margin=1.5)


def test_recipe_rebuilds_bit_for_bit(speech_dev, source, tmp_path):
    recipe = tob.make_recipe(source, seed=0)
    assert tob.make_recipe(tob.CalibrationSource(speech_dev), seed=0) == recipe
    assert tob.make_recipe(source, seed=1) != recipe
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    loaded = tob.load_recipe(str(path))
    picked = tob.select(recipe, 1)
    assert len(picked) == 18 and {(e["bucket"], e["variant"]) for e in picked} == {(b, v) for b in (10, 15, 20) for v in tob.VARIANTS}
    again, fresh = {e["id"]: e for e in loaded}, tob.CalibrationSource(speech_dev)
    for e in picked:
        audio, text = tob.render(e, source)
        rebuilt, text2 = tob.render(again[e["id"]], fresh)
        assert audio.dtype == np.float32 and audio.tobytes() == rebuilt.tobytes() and text == text2
        assert tob.fingerprint(audio) == tob.fingerprint(rebuilt) and len(audio) == e["total"]
    clean, noisy = (tob.render(e, source)[0] for e in recipe[:3:2])  # b10_range_00: clean, noise (25 dB)
    snr = 10 * np.log10(np.mean(clean[clean != 0] ** 2) / np.mean((noisy - clean) ** 2))
    assert 24 < snr < 26
    # the kinds take turns in a cell
    four = tob.select(recipe, 4)
    assert [e["target"] for e in four if (e["bucket"], e["variant"]) == (10, "clean")] == ["range", "exact", "repeat", "tight"]


def test_arguments():
    from liteasr_hf.cli.benchmark_e2e import parse_args

    args = parse_args(["--top-of-bucket", "--lite", "x", "--clips-per-bucket", "2", "--output-json", "o.json"])
    assert args.top_of_bucket and args.clips_per_bucket == 2 and args.json == "o.json" and args.dtype == "auto"
    assert parse_args(["--top-of-bucket", "--lite", "x"]).json.endswith("e2e-top-of-bucket.json")
    for bad in (["--top-of-bucket"], ["--top-of-bucket", "--lite", "x", "--long"],
                ["--top-of-bucket", "--lite", "x", "--clips-per-bucket", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


@pytest.mark.slow
def test_tiny_run_table_and_json(speech_dev, tiny_en_path, tmp_path, capsys):
    """Six clips topping the 15 s bucket (one per variant), real tiny.en on buckets 15 / 20 s, one thread."""
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from liteasr_hf import LiteWhisperForConditionalGeneration, save_lite_checkpoint
    from liteasr_hf.cli.benchmark_e2e import main

    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense)
    lite.config.encoder_context_buckets, lite.config.encoder_context_margin = [15.0, 20.0], 1.0
    folder = save_lite_checkpoint(lite, str(tmp_path / "lite"), processor=AutoProcessor.from_pretrained(tiny_en_path))
    out = tmp_path / "tob.json"
    assert main(["--top-of-bucket", "--lite", folder, "--dataset", speech_dev, "--buckets", "15", "--clips-per-bucket", "1",
                 "--dtype", "float32", "--threads", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| bucket s | variant | clips | context s | raw loops | guard fallbacks | loops after guard |" in table
    assert "| 15 | g711 | 1 | 15 |" in table and "| **all** | **all** | 6 | 15 |" in table
    result = json.loads(out.read_text())
    settings, rows = result["settings"], result["results"]
    assert settings["cpu"]["model_name"] and settings["dtype"] == "float32" and settings["threads"] == 1
    assert settings["model_buckets"] == [15.0, 20.0] and settings["built"] == {"buckets": [15], "margin": 1.0, "seed": 0}
    assert settings["clips"] == len(settings["recipe"]) == 6
    assert [(r["bucket"], r["variant"]) for r in rows] == [(15, v) for v in tob.VARIANTS] + [(15, "all"), ("all", "all")]
    fields = {"clips", "contexts_s", "raw_loops", "guard_fallbacks", "loops_after_guard", "flagged_generate", "flagged_raw",
              "transcriber_fallbacks", "transcriber_loops", "flagged_transcriber", "wer_generate", "wer_raw", "wer_transcriber"}
    assert all(fields <= set(r) for r in rows) and rows[-1]["clips"] == 6 and rows[-1]["wer_generate"] < 0.5
    source = tob.CalibrationSource(speech_dev)
    for row, entry in zip(rows, settings["recipe"]):
        (clip,) = row["clip_results"]
        assert clip["id"] == entry["id"] and clip["sha256"] == tob.fingerprint(tob.render(entry, source)[0])
        assert clip["context_s"] == 15.0 and clip["generate"]["text"] and clip["transcriber"]["text"]
        # the guard decodes again exactly the rows that loop without it (the same first decode, the same test)
        assert clip["generate"]["fallback"] == clip["raw"]["loop"]
    total = rows[-1]
    assert total["guard_fallbacks"] == total["raw_loops"] and total["loops_after_guard"] <= total["guard_fallbacks"]
