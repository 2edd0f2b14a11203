"""The transcription engine on real speech (bundled tiny.en as lite-whisper with the default dynamic context): a
long synthetic recording cut into VAD pieces, batched at their own contexts, times in recording time; silence; the
loop guard; sequential long-form."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from liteasr_hf.audio import BUNDLED_CLIPS, SAMPLING_RATE, load_clips
from liteasr_hf.evaluation.wer import word_errors
from liteasr_hf.lite_whisper import LiteWhisperForConditionalGeneration
from liteasr_hf.lite_whisper.context_lite_whisper import ContextPlan
from liteasr_hf.transcription import Transcriber, transcribe
from liteasr_hf.transcription.engine import Piece, merge_speech, text_compression_ratio
from liteasr_hf.transcription.greedy import decoder_prompt, greedy_decode

GAPS = [0.3, 3.0, 0.5, 2.5, 1.0]  # seconds of silence after each clip but the last


@pytest.fixture(scope="module")
def tiny_lite(tiny_en_path):
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense)
    lite.config.encoder_context_buckets, lite.config.encoder_context_margin = [10.0, 15.0, 20.0], 1.0
    lite.config.encoder_padding_stride = 4
    return lite, AutoProcessor.from_pretrained(tiny_en_path)


@pytest.fixture(scope="module")
def recording():
    """Six shipped clips joined with 0.3-3 s of silence, under low noise: (audio, [(start, end)], [reference])."""
    clips = load_clips(BUNDLED_CLIPS)[:6]
    parts, spans, t = [], [], 0.0
    for i, clip in enumerate(clips):
        spans.append((t, t + clip.seconds))
        parts.append(clip.audio)
        t += clip.seconds
        if i < len(GAPS):
            parts.append(np.zeros(round(GAPS[i] * SAMPLING_RATE), np.float32))
            t += GAPS[i]
    audio = np.concatenate(parts)
    audio += np.random.default_rng(0).normal(0, 1e-3, len(audio)).astype(np.float32)
    return audio, spans, [c.text for c in clips]


def test_merge_speech_keeps_pieces_short_and_splits_at_long_pauses():
    s = SAMPLING_RATE
    speech = [(0, 2 * s), (int(2.5 * s), 5 * s), (9 * s, 12 * s), (int(12.2 * s), 19 * s), (20 * s, 21 * s)]
    pieces = merge_speech(speech, max_samples=8 * s, max_gap_samples=2 * s)
    # 0.5 s pause: merged; 4 s pause: a new piece; 12.2-19 would make 10 s: a new piece; 1 s pause after it: merged
    # would be 12 s (> 8): a new piece
    assert pieces == [Piece(0, 5 * s), Piece(9 * s, 12 * s), Piece(int(12.2 * s), 19 * s), Piece(20 * s, 21 * s)]
    assert merge_speech([], 8 * s, 2 * s) == []
    assert merge_speech([(0, 10 * s)], 8 * s, s) == [Piece(0, 8 * s)]  # never longer than asked


def test_text_compression_ratio_flags_repetition_only():
    sentence = "Whereas recognition of the inherent dignity and of the equal rights of all members of the human family"
    assert text_compression_ratio(sentence) < 1.6
    assert text_compression_ratio("Press 2 to listen to it. " * 12) > 2.4


@pytest.mark.slow
def test_long_recording_segments_words_and_contexts(tiny_lite, recording):
    """Pieces in order and inside the audio; every word inside the clip it was said in (± 0.5 s, the VAD's padding
    and DTW's 20 ms steps well inside that); pieces batched at their own buckets, never the full window; the text
    as tiny.en reads the clips (WER against the shipped references ≤ 12 %: tiny.en scores ~6 % on them one by one,
    and piece boundaries that join clips must not add whole-sentence errors)."""
    lite, processor = tiny_lite
    audio, spans, references = recording
    seen = []
    transcriber = Transcriber(lite, processor, batch_size=2, dtype="float32", word_timestamps=True)
    handle = transcriber.model.get_encoder().layers[0].register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    progress = []
    result = transcriber.transcribe(audio, on_progress=progress.append)
    handle.remove()
    duration = len(audio) / SAMPLING_RATE
    assert result.duration == pytest.approx(duration) and sum(progress) == pytest.approx(duration)
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and len(result.segments) >= 3  # the 3 s and 2.5 s pauses end pieces
    for a, b in zip(result.segments, result.segments[1:]):
        assert a.end <= b.start
    assert result.segments[0].start >= 0 and result.segments[-1].end <= duration
    words = [w for s in result.segments for w in s.words]
    assert len(words) > 60
    for w in words:
        middle = (w.start + w.end) / 2
        assert any(a - 0.5 <= middle <= b + 0.5 for a, b in spans), (w, spans)
    assert max(seen) < 1500 and all(n < 1000 for n in seen)  # buckets of 10-20 s, strided padding: never 30 s
    assert result.info["pieces"] == len(result.segments) and set(result.info["contexts"]) <= {"15", "20"}
    errors = word_errors([" ".join(references)], [result.text])
    assert errors["wer"] <= 0.12, (errors["wer"], result.text)
    assert result.fallbacks == 0 and result.loops == 0
    data = result.to_dict()
    assert set(data) >= {"text", "language", "segments"} and set(data["segments"][0]) == {"start", "end", "text", "words"}


def test_silence_and_a_blip_give_no_segments(tiny_lite):
    lite, processor = tiny_lite
    transcriber = Transcriber(lite, processor, dtype="float32")
    silence = np.random.default_rng(1).normal(0, 1e-4, 5 * SAMPLING_RATE).astype(np.float32)
    for audio in (silence, silence[: SAMPLING_RATE // 20], np.zeros(0, np.float32)):
        result = transcriber.transcribe(audio)
        assert result.segments == [] and result.text == "" and result.loops == 0


@pytest.mark.slow
def test_loop_guard_recovers_pieces_that_loop_at_a_short_context(tiny_lite, recording):
    """A forced loop: the encoder's output negated whenever it runs on less than the full window (a stand-in for an
    encoder that goes wrong at the top of its bucket) makes every piece repeat itself to the token cap. The guard
    flags them, decodes them again on the full window (where the output is left alone) and counts them; the text is
    then the unforced text of the same pieces on the full window."""
    lite, processor = tiny_lite
    audio, _, _ = recording
    transcriber = Transcriber(lite, processor, batch_size=4, dtype="float32")
    full_window = Transcriber(lite, processor, batch_size=4, dtype="float32",
                              max_piece_seconds=transcriber.max_piece_seconds)
    full_window.settings = full_window.settings.replace(buckets=None)
    want = full_window.transcribe(audio)

    def negate_short(module, args, kwargs, out):
        if out.last_hidden_state.shape[1] < 1500:
            out.last_hidden_state = -out.last_hidden_state
        return out

    handle = transcriber.model.get_encoder().register_forward_hook(negate_short, with_kwargs=True)
    try:
        got = transcriber.transcribe(audio)
    finally:
        handle.remove()
    assert got.fallbacks == want.info["pieces"] == 3 and got.loops == 0
    assert got.text == want.text


def test_greedy_decode_gives_generates_tokens_as_rows_leave(tiny_lite, recording):
    """The batched decoding loop against Whisper's `generate` (greedy, same prompt and suppression) on the same
    encoder input: the pieces end tens of tokens apart, so rows leave the batch mid-way; every row's tokens are
    generate's exactly (float32; a row leaving changes no other row's arithmetic)."""
    lite, processor = tiny_lite
    audio, spans, _ = recording
    transcriber = Transcriber(lite, processor, dtype="float32")
    pieces = [audio[round(s * SAMPLING_RATE) : round(e * SAMPLING_RATE)] for s, e in spans]
    plan = transcriber.settings.plan_samples(max(len(p) for p in pieces))
    features, mask = transcriber._features(pieces, plan)
    model = transcriber.model
    with torch.inference_mode():
        want = model.generate(features, attention_mask=mask, encoder_context=plan, max_new_tokens=96, guard_loops=False)
        encoded = model.get_encoder()(features, attention_mask=mask, encoder_context=plan).last_hidden_state
    got = greedy_decode(model, encoded, decoder_prompt(model.generation_config), 96)
    eos = model.generation_config.eos_token_id
    lengths = [len(g) for g in got]
    assert max(lengths) - min(lengths) > 10  # rows did leave before the last one ended
    assert [g.tolist() for g in got] == [[t for t in w.tolist() if t != eos] for w in want]


def test_decoder_prompt_of_a_multilingual_model():
    config = SimpleNamespace(decoder_start_token_id=50258, no_timestamps_token_id=50363, is_multilingual=True,
                             lang_to_id={"<|en|>": 50259, "<|de|>": 50261}, task_to_id={"transcribe": 50359, "translate": 50358})
    assert decoder_prompt(config, "German", "translate") == [50258, 50261, 50358, 50363]
    assert decoder_prompt(config) == [50258, 50259, 50359, 50363]
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        decoder_prompt(config, "klingon")


def test_bad_options_are_clear_errors(tiny_lite):
    lite, processor = tiny_lite
    with pytest.raises(ValueError, match="mode must be one of"):
        Transcriber(lite, processor, mode="chunky")
    with pytest.raises(ValueError, match="batch_size"):
        Transcriber(lite, processor, batch_size=0)
    with pytest.raises(ValueError, match="English-only"):
        Transcriber(lite, processor, language="de")
    with pytest.raises(ValueError, match="needs its processor"):
        transcribe(lite, np.zeros(16000, np.float32))


@pytest.mark.slow
def test_sequential_mode_conditions_on_previous_text(tiny_lite, recording):
    """Whisper's long-form decoding over the whole 35 s recording (two windows): timestamped segments in order,
    inside the audio, the same words as the VAD pieces give (WER between the two ≤ 10 %)."""
    lite, processor = tiny_lite
    audio, _, references = recording
    result = Transcriber(lite, processor, mode="sequential", dtype="float32").transcribe(audio)
    starts = [s.start for s in result.segments]
    assert len(starts) >= 3 and starts == sorted(starts) and result.segments[-1].end <= len(audio) / SAMPLING_RATE + 0.5
    assert word_errors([" ".join(references)], [result.text])["wer"] <= 0.12


def test_full_plan_is_every_frame():
    assert ContextPlan(3000).groups() is None and ContextPlan(3000).positions == 1500
    assert torch.equal(ContextPlan(1000, 300, 4).groups()[1][-1:], torch.tensor([4]))


SPEECH_LONG_EN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                              "speech-long", "udhr_preamble_en.flac")


@pytest.mark.slow
@pytest.mark.parametrize("fast", [False, True])
def test_chunked_pipeline_neither_duplicates_nor_drops_text(real_context_model, fast):
    """pipeline(chunk_length_s=30, batch_size=4) on speech-long's 149 s English recording, lite tiny.en as loaded
    (fp32, dynamic context) and through optimize_for_cpu: the transcript holds the reference's words once (word count
    within 10 %, WER under 15 %: tiny.en reads this recording at ~5 %, a duplicated window doubles the count)."""
    import copy
    import csv

    from transformers import pipeline

    from liteasr_hf import optimize_for_cpu
    from liteasr_hf.transcription.audio_io import load_audio

    if not os.path.exists(SPEECH_LONG_EN):
        pytest.skip(f"{SPEECH_LONG_EN} not present")
    with open(os.path.join(os.path.dirname(SPEECH_LONG_EN), "metadata.csv"), newline="", encoding="utf-8") as f:
        reference = next(r["transcription"] for r in csv.DictReader(f) if r["file_name"] == "udhr_preamble_en.flac")
    _, lite, processor = real_context_model
    model = optimize_for_cpu(copy.deepcopy(lite), keep_memory=False) if fast else lite
    asr = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                   feature_extractor=processor.feature_extractor, dtype=model.dtype, chunk_length_s=30, batch_size=4)
    asked = []
    generate = model.generate
    model.generate = lambda *a, **k: asked.append(k.get("return_timestamps")) or generate(*a, **k)
    try:
        text = asr(load_audio(SPEECH_LONG_EN), generate_kwargs={"num_beams": 1})["text"]
    finally:
        del model.generate
    # the chunks are decoded with timestamp tokens, which the merge of overlapping chunks anchors on (without them
    # base 80 % in bf16 wrote this recording twice); the output stays text only
    assert asked and all(asked) and isinstance(text, str)
    errors = word_errors([reference], [text])
    assert abs(len(text.split()) - len(reference.split())) <= 0.1 * len(reference.split()), text
    assert errors["wer"] < 0.15, (errors["wer"], text)
