"""Evaluation: WER arithmetic and normalization, encoder size/FLOPs, bad input, real tiny.en transcripts."""

import os

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from liteasr_hf import LiteWhisperConfig, LiteWhisperForConditionalGeneration
from liteasr_hf.audio import BUNDLED_CLIPS
from liteasr_hf.evaluation import encoder_cost, evaluate_model, load_groups, markdown, model_index, word_errors
from liteasr_hf.evaluation.run import Utterance, repeated_ngram, score
from liteasr_hf.evaluation.wer import paired_bootstrap


def test_wer_of_known_strings():
    e = word_errors(["the cat sat on the mat", "a b c d"], ["the cat sit on mat", "a b c d e"])
    assert (e["substitutions"], e["deletions"], e["insertions"], e["words"]) == (1, 1, 1, 10)
    assert e["wer"] == pytest.approx(3 / 10)
    assert e["errors"] == [2, 1] and e["utterance_words"] == [6, 4]


def test_normalizer_applies_to_both_sides():
    ref, hyp = "Mr. Smith's colour, 10 dollars!", "mister smith's color: ten dollars"
    assert word_errors([ref], [hyp])["wer"] == 0.0
    assert word_errors([hyp], [ref])["wer"] == 0.0
    assert word_errors(["HELLO, World."], ["hello world"])["wer"] == 0.0
    # A reference with no words after normalization is not scored, but counted.
    e = word_errors(["Hmm.", "yes"], ["anything", "yes"])
    assert (e["wer"], e["words"], e["empty_references"]) == (0.0, 1, 1)


def test_paired_bootstrap_interval():
    import numpy as np

    words = [10] * 50
    a = [i % 3 for i in range(50)]
    assert paired_bootstrap(a, a, words) == (0.0, 0.0)  # the same system: no difference in any resample
    # One more error in every clip of equal length: every resample differs by exactly 1/10.
    assert paired_bootstrap(a, [e + 1 for e in a], words) == pytest.approx((0.1, 0.1))
    # Against the normal approximation of a ratio estimator on 400 clips, where it holds well: the
    # interval's half-width within 15 % of 1.96 sd (the bootstrap's own Monte Carlo error is ~2 %).
    rng = np.random.default_rng(0)
    w = rng.integers(3, 20, 400)
    ea = rng.binomial(w, 0.06)
    eb = ea + rng.binomial(w, 0.02) - rng.binomial(ea, 0.1)
    delta = (eb.sum() - ea.sum()) / w.sum()
    sd = np.sqrt(len(w) * np.var(eb - ea - delta * w)) / w.sum()
    lo, hi = paired_bootstrap(ea, eb, w)
    assert lo < delta < hi and (hi - lo) / 2 == pytest.approx(1.96 * sd, rel=0.15)
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1, 2], [1], [5, 5])


def test_table_arithmetic():
    utts = [Utterance("1", "x", 2.0, "a b c d", "a b c", False), Utterance("2", "x", 3.0, "e f", "e g h", False),
            Utterance("3", "y", 5.0, "i j k l m", "i j k l m", False)]
    x, y, all_ = score(utts[:2]), score(utts[2:]), score(utts)
    for k in ("substitutions", "deletions", "insertions", "words", "clips", "seconds"):
        assert all_[k] == x[k] + y[k]
    assert (x["substitutions"], x["deletions"], x["insertions"]) == (1, 1, 1)
    assert all_["wer"] == pytest.approx(3 / 11) and x["wer"] == pytest.approx(3 / 6) and y["wer"] == 0
    assert repeated_ngram("we will we will we will we will rock you") and not repeated_ngram("no, no, no I said")
    assert score([Utterance("4", "z", 1.0, "a", "a", True)])["loops"] == 1


def test_table_compares_each_model_with_the_last():
    refs = ["a b c d e"] * 20

    def result(name, hyps):
        s = score([Utterance(str(i), "x", 1.0, r, h, False) for i, (r, h) in enumerate(zip(refs, hyps))])
        utts = [dict(id=str(i), errors=e, words=w) for i, (e, w) in enumerate(zip(s.pop("errors"), s.pop("utterance_words")))]
        cost = dict(params=1, dense_params=1, flops=1, dense_flops=1)
        return dict(model=name, encoder=cost, sources={}, summary=dict(s, wall_s=1.0, rtf=1.0), worst=[], utterances=utts)

    dense = result("dense", refs)
    lite = result("lite", ["a b c d"] * 20)  # one deletion in every clip: +20 points, in every resample
    table = markdown([lite, dense])
    assert "WER minus dense's in points" in table and "- lite: +20.00 (+20.00, +20.00)" in table


def test_encoder_cost_matches_the_models():
    cfg = dict(d_model=64, encoder_layers=2, decoder_layers=1, encoder_ffn_dim=256, decoder_ffn_dim=128,
               encoder_attention_heads=4, decoder_attention_heads=4, vocab_size=300, max_source_positions=50,
               pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    count = lambda m: sum(p.numel() for p in m.model.encoder.parameters())  # noqa: E731
    dense = encoder_cost(WhisperConfig(**cfg))
    assert dense["params"] == dense["dense_params"] == count(WhisperForConditionalGeneration(WhisperConfig(**cfg)))
    lrc = [{"q_proj": 16, "k_proj": 16, "fc1": 32}, {"fc2": 16}]
    lite = encoder_cost(LiteWhisperConfig(low_rank_config=lrc, **cfg))
    assert lite["params"] == count(LiteWhisperForConditionalGeneration(LiteWhisperConfig(low_rank_config=lrc, **cfg)))
    assert lite["dense_params"] == dense["params"] and lite["dense_flops"] == dense["flops"]
    T, d, f = 50, 64, 256
    saved = 2 * T * ((d * d - 16 * 2 * d) * 2 + (d * f - 32 * (d + f)) + (f * d - 16 * (d + f)))
    assert dense["flops"] - lite["flops"] == saved


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="cannot load model"):
        evaluate_model("no-such-org/no-such-model-xyz", [("x", [])])
    (tmp_path / "nocol").mkdir()
    (tmp_path / "nocol" / "metadata.csv").write_text("file_name,speaker\njfk_inaugural_1961.flac,jfk\n")
    os.symlink(os.path.join(BUNDLED_CLIPS, "jfk_inaugural_1961.flac"), tmp_path / "nocol" / "jfk_inaugural_1961.flac")
    with pytest.raises(ValueError, match="no transcript column"):
        load_groups(str(tmp_path / "nocol"))
    with pytest.raises(ValueError, match="no column 'words'"):
        load_groups(str(tmp_path / "nocol"), text_column="words")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metadata.csv").write_text("file_name,transcription\n")
    with pytest.raises(ValueError, match="no usable audio clips"):
        load_groups(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="ESB"):
        load_groups("esb")


def test_model_index_block():
    yaml = pytest.importorskip("yaml")
    block = yaml.safe_load(model_index("lite-base", [{"dataset": "speech-dev", "split": "evaluation", "wer": 0.0712}]))
    res = block["model-index"][0]["results"][0]
    assert res["metrics"][0] == {"type": "wer", "value": 7.12, "name": "WER"} and res["dataset"]["split"] == "evaluation"


# Real tiny.en, greedy; checked by ear against the references (JFK is the famous line, word for word).
EXPECTED = {
    "jfk_inaugural_1961.flac": "And so my fellow Americans ask not what your country can do for you, ask what you can do for your country.",
    "librispeech_1272_forte_0.flac": "A man said to the universe, Sir, I exist.",
    "pocketsphinx_goforward.flac": "Go forward 10 meters.",
}


@pytest.mark.slow
def test_tiny_en_three_clips_exact_transcripts():
    from liteasr_hf.audio import load_clips
    from liteasr_hf.conversion import TEST_MODEL

    clips = load_clips(None, files=list(EXPECTED))
    res = evaluate_model(TEST_MODEL, [("shipped", clips)], batch_size=3, progress=False)
    got = {u["id"]: u["hypothesis"] for u in res["utterances"]}
    assert got == EXPECTED
    s = res["summary"]
    assert s["clips"] == 3 and s["loops"] == 0 and s["wer"] < 0.1
    assert "| **all** | 3 |" in markdown([res])


@pytest.mark.slow
def test_two_processes_score_what_one_scores(tmp_path):
    """`accelerate launch` / torchrun: each process transcribes its share of the clips and the utterances are gathered
    on the main process, which alone writes the JSON. Two CPU processes (gloo) must score what one scores."""
    import json
    import subprocess
    import sys

    # One process through the installed `liteasr-hf evaluate`, two through the checkout's wrapper under torchrun (as
    # `accelerate launch scripts/evaluate_wer.py` runs it): the same command either way.
    liteasr = os.path.join(os.path.dirname(sys.executable), "liteasr-hf")
    wrapper = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "evaluate_wer.py")
    args = ["--model", "bundled/whisper-tiny.en", "--device", "cpu", "--worst", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {1: [liteasr, "evaluate"],
            2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", wrapper]}
    out = {}
    for n, launcher in runs.items():
        path = tmp_path / f"{n}.json"
        r = subprocess.run(launcher + args + ["--output", str(path)], capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        out[n] = json.loads(path.read_text())
    assert out[2]["settings"]["processes"] == 2
    one, two = (sorted((u["id"], u["hypothesis"]) for u in out[n]["results"][0]["utterances"]) for n in (1, 2))
    assert one == two and len(one) == 4
    assert out[1]["results"][0]["summary"]["wer"] == out[2]["results"][0]["summary"]["wer"]


def test_other_languages_use_the_basic_normalizer_and_cjk_is_scored_per_character():
    de = word_errors(["Für die besten Aussichten, sagte er."], ["für die besten aussichten sagte er"], ["de"])
    assert de["wer"] == 0.0 and de["words"] == 6  # case and punctuation only; "für" keeps its umlaut
    assert word_errors(["Für"], ["fur"], ["de"])["wer"] == 1.0  # a missing umlaut is an error
    zh = word_errors(["我们今天去公园"], ["我们明天去公园"], ["zh"])
    assert zh["words"] == 7 and zh["substitutions"] == 1  # CER: one character of seven
    # English (or no language) keeps the English normalizer's spelling map
    assert word_errors(["the colour grey"], ["the color gray"], ["en"])["wer"] == 0.0


def test_groups_by_language_and_transcribes_each_clip_in_its_language(tmp_path, monkeypatch):
    """A multilingual model is asked for each clip's own language; the table has a row per language."""
    import soundfile as sf

    from liteasr_hf.evaluation import run

    rows = [("a.flac", "hallo welt", "de"), ("b.flac", "bonjour", "fr"), ("c.flac", "guten tag", "de")]
    for name, _, _ in rows:
        sf.write(tmp_path / name, torch.zeros(8000).uniform_(-0.1, 0.1).numpy(), 16000)
    (tmp_path / "metadata.csv").write_text("file_name,transcription,language\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    groups = load_groups(str(tmp_path), group_by="language")
    assert [(g, [c.id for c in clips]) for g, clips in groups] == [("de", ["a.flac", "c.flac"]), ("fr", ["b.flac"])]
    asked = []

    def fake_transcribe(model, processor, audios, batch_size, long_form="sequential", **gen):
        asked.append((gen.get("language"), len(audios)))
        return ["hallo welt" if gen.get("language") == "de" else "bonjour"] * len(audios), [False] * len(audios)

    class Model:  # only what evaluate_model reads
        generation_config = type("G", (), {"is_multilingual": True})()
        config = LiteWhisperConfig(encoder_layers=1, decoder_layers=1, d_model=64, encoder_attention_heads=4,
                                   decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128)

    monkeypatch.setattr(run, "transcribe", fake_transcribe)
    result = evaluate_model("m", groups, model=Model(), processor=None, progress=False)
    assert sorted(asked) == [("de", 2), ("fr", 1)]
    assert set(result["sources"]) == {"de", "fr"} and result["sources"]["fr"]["wer"] == 0.0
    assert result["sources"]["de"]["wer"] == 0.5  # "guten tag" heard as "hallo welt"


def test_table_gives_each_source_its_own_interval():
    """With several sources (languages), each model's difference per source, its interval over that source's clips
    (none from a single clip)."""
    def result(name, hyps, sources):
        utts = [Utterance(str(i), src, 1.0, "a b c d e", h, False) for i, (h, src) in enumerate(zip(hyps, sources))]
        by = {}
        for src in dict.fromkeys(sources):
            row = score([u for u in utts if u.source == src])
            for k in ("references", "hypotheses", "errors", "utterance_words"):
                row.pop(k)
            by[src] = dict(row, wall_s=1.0, rtf=1.0)
        s = score(utts)
        per = [dict(id=u.id, source=u.source, errors=e, words=w) for u, e, w in zip(utts, s.pop("errors"), s.pop("utterance_words"))]
        cost = dict(params=1, dense_params=1, flops=1, dense_flops=1)
        return dict(model=name, encoder=cost, sources=by, summary=dict(s, wall_s=1.0, rtf=1.0), worst=[], utterances=per)

    sources = ["de"] * 10 + ["fr"]
    dense = result("dense", ["a b c d e"] * 11, sources)
    lite = result("lite", ["a b c d"] * 10 + ["a b c d e"], sources)  # de: one deletion a clip; fr: none
    table = markdown([lite, dense])
    assert "| model | de | fr |" in table and "| lite | +20.00 (+20.00, +20.00) | +0.00 (1 clip) |" in table


def test_context_buckets_reach_every_generate_call_as_settings(tmp_path, monkeypatch):
    """evaluate_model(context_buckets=...): the model's settings with these buckets, passed to every transcription
    (`encoder_context`, the per-language ones too); a dense Whisper is wrapped as lite-whisper; the config untouched.
    By default ("config") no per-call context."""
    from liteasr_hf.audio import Clip
    from liteasr_hf.evaluation import run
    from liteasr_hf.lite_whisper.context_lite_whisper import ContextSettings
    from modeling_utils import lite_model, tiny_audio, tiny_processor

    dense, lite = lite_model(None, margin=0.1)
    lite.config.encoder_padding_stride = 2
    processor = tiny_processor(tmp_path)
    groups = [("s", [Clip("a", tiny_audio(seconds=0.3), "x", language="en"), Clip("b", tiny_audio(seconds=0.3), "x", language="fr")])]
    asked = []

    def fake_transcribe(model, processor, audios, batch_size, long_form="sequential", **gen):
        asked.append((type(model).__name__, gen.get("language"), gen.get("encoder_context")))
        return ["x"] * len(audios), [False] * len(audios)

    monkeypatch.setattr(run, "transcribe", fake_transcribe)
    evaluate_model("m", groups, model=lite, processor=processor, progress=False, context_buckets=[0.4])
    settings = ContextSettings((0.4,), 0.1, 2, 100)
    assert sorted(asked) == [("LiteWhisperForConditionalGeneration", "en", settings), ("LiteWhisperForConditionalGeneration", "fr", settings)]
    assert (lite.config.encoder_context_buckets, lite.config.encoder_padding_stride) == (None, 2)
    asked.clear()
    evaluate_model("m", groups, model=dense, processor=processor, progress=False, context_buckets=[0.4])
    assert sorted(asked) == [("LiteWhisperForConditionalGeneration", lang, ContextSettings((0.4,), 1.0, 1, 100))
                             for lang in ("en", "fr")]
    asked.clear()
    evaluate_model("m", groups, model=lite, processor=processor, progress=False)
    assert sorted(asked) == [("LiteWhisperForConditionalGeneration", "en", None), ("LiteWhisperForConditionalGeneration", "fr", None)]
