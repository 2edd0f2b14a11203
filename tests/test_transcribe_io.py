"""Transcription's input and output, without a model: recordings in every common format (encoded here with PyAV
from a shipped clip) decode to the same 16 kHz mono speech; unusable files are one AudioError naming the file; the
txt / srt / vtt / json outputs parse back with real subtitle parsers and are never left half-written."""

import io
import json
import os
import sys

import av
import numpy as np
import pytest
import soundfile as sf

from audio_utils import encode

from liteasr_hf.audio import BUNDLED_CLIPS, AudioError
from liteasr_hf.transcription.audio_io import load_audio, probe_duration
from liteasr_hf.transcription.result import Segment, Transcription, Word
from liteasr_hf.transcription.writers import FORMATS, timestamp, write_outputs

CLIP = os.path.join(BUNDLED_CLIPS, "jfk_inaugural_1961.flac")  # 11 s, 16 kHz mono


@pytest.fixture(scope="module")
def speech():
    audio, sr = sf.read(CLIP, dtype="float32")
    assert sr == 16_000
    return audio


def similarity(decoded, reference, max_lag=800):
    """(correlation, rms ratio) of `decoded` against `reference` at the lag within ±50 ms that aligns them best."""
    from scipy.signal import correlate

    n = min(len(decoded), len(reference))
    lag = int(np.argmax(correlate(decoded[:n], reference[:n], method="fft")[n - 1 - max_lag : n + max_lag])) - max_lag
    a, b = (decoded[lag:], reference) if lag >= 0 else (decoded, reference[-lag:])
    a, b = a[: min(len(a), len(b))], b[: min(len(a), len(b))]
    return float(np.corrcoef(a, b)[0, 1]), float(np.sqrt(np.mean(a**2) / np.mean(b**2)))


# (file name, codec, sample rate, channels, video stream, least correlation with the FLAC). PCM is exact up to the
# resampling to 44.1 kHz and back (measured 0.99999998). The lossy codecs at their default bit rates measured 0.997
# (mp3 at 22.05 kHz) to 0.99999 on this band-limited clip; 0.99 leaves room for other encoder versions, while a wrong
# sample rate or a time shift of a few milliseconds falls far below it.
FORMATS_UNDER_TEST = [
    ("stereo44k.wav", "pcm_s16le", 44_100, 2, False, 0.999),
    ("speech.mp3", "libmp3lame", 44_100, 2, False, 0.99),
    ("speech.opus", "libopus", 48_000, 1, False, 0.99),
    ("speech.ogg", "vorbis", 44_100, 2, False, 0.99),
    ("speech.m4a", "aac", 44_100, 2, False, 0.99),
    ("video.mp4", "aac", 44_100, 2, True, 0.99),
    ("video.mkv", "libmp3lame", 22_050, 1, True, 0.99),
]


@pytest.mark.parametrize("name, codec, rate, channels, video, least", FORMATS_UNDER_TEST, ids=[f[0] for f in FORMATS_UNDER_TEST])
def test_every_format_decodes_to_the_same_speech(speech, tmp_path, name, codec, rate, channels, video, least):
    path = tmp_path / name
    encode(path, speech, codec, rate, channels, video, options={"strict": "experimental"} if codec == "vorbis" else None)
    with av.open(str(path)) as c:  # the file is what the test says it is
        assert [s.type for s in c.streams] == (["video", "audio"] if video else ["audio"])
        assert (c.streams.audio[0].rate, c.streams.audio[0].channels) == (rate, channels)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Encoders pad to whole frames (aac: 1024 samples, 23 ms at 44.1 kHz) and containers may or may not trim it.
    assert abs(len(audio) - len(speech)) <= 0.05 * 16_000, (len(audio), len(speech))
    corr, level = similarity(audio, speech)
    assert corr >= least, corr
    assert 0.85 < level < 1.15, level  # channels averaged: stereo is not 1.41x louder (FFmpeg's float downmix)
    # The header's figure, for progress bars only: mkv gives the container's, which ends with the video's last frame.
    assert abs(probe_duration(path) - len(speech) / 16_000) < 0.15


def test_bytes_stdin_arrays_and_dicts(speech, tmp_path, monkeypatch):
    path = tmp_path / "speech.mp3"
    encode(path, speech, "libmp3lame", 44_100, 2)
    from_file = load_audio(path)
    data = path.read_bytes()
    np.testing.assert_array_equal(load_audio(data), from_file)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    np.testing.assert_array_equal(load_audio("-"), from_file)
    # arrays are 16 kHz already; stereo is averaged, either orientation
    np.testing.assert_array_equal(load_audio(speech), speech)
    np.testing.assert_allclose(load_audio(np.stack([speech, 0 * speech], axis=1)), speech / 2, atol=1e-7)
    np.testing.assert_allclose(load_audio(np.stack([speech, speech])), speech, atol=1e-7)
    # the ASR pipeline's dict, at another rate
    encode(tmp_path / "s.wav", speech, "pcm_s16le", 44_100, 2)
    stereo44, sr = sf.read(tmp_path / "s.wav", dtype="float32")
    for key in ("raw", "array"):
        corr, _ = similarity(load_audio({key: stereo44, "sampling_rate": sr}), speech)
        assert corr > 0.999
    with pytest.raises(AudioError, match="sampling_rate"):
        load_audio({"array": speech})
    assert load_audio(np.zeros(0, np.float32)).shape == (0,)


def test_a_file_without_samples_is_empty_audio_not_an_error(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)  # a 44-byte header and no data
    assert load_audio(tmp_path / "empty.wav").shape == (0,)


def test_unusable_files_are_one_error_naming_the_file(tmp_path, speech):
    rng = np.random.default_rng(0)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "random.flac").write_bytes(rng.bytes(20_000))  # FFmpeg picks the flac demuxer by its name
    (tmp_path / "random.mp3").write_bytes(rng.bytes(20_000))
    (tmp_path / "notes.wav").write_text("these are meeting notes, not a recording\n" * 20)
    with av.open(str(tmp_path / "silent.mp4"), "w") as c:  # a video stream only
        picture = c.add_stream("mpeg4", rate=10)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            c.mux(picture.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
        c.mux(picture.encode(None))
    sf.write(tmp_path / "nan.wav", np.full(1600, np.nan, np.float32), 16_000, subtype="FLOAT")
    cases = {"missing.wav": "no such file", "empty.wav": r"empty file \(0 bytes\)", "random.flac": "cannot decode audio",
             "random.mp3": "cannot decode audio", "notes.wav": "cannot decode audio",
             "silent.mp4": r"no audio stream \(.*streams: video\)", "nan.wav": "NaN or infinite"}
    for name, message in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(AudioError, match=message) as e:
            load_audio(path)
        assert str(e.value).startswith(f"{path}: "), str(e.value)
        assert probe_duration(path) is None or name == "nan.wav"
    with pytest.raises(AudioError, match="^stdin: empty"):
        load_audio(b"", name="stdin")
    with pytest.raises(AudioError, match="^talk: cannot decode"):
        load_audio(rng.bytes(1000), name="talk")


def transcription():
    """Two hours in: segments past 1 h, one with no text, one with a line break and an arrow in its text."""
    segments = [Segment(0.0, 2.5, " And so, my fellow Americans,", [Word(0.0, 0.4, " And", 0.9)]),
                Segment(2.5, 3.0, "  "),
                Segment(3.0, 7.25, " ask not what your country\ncan do --> for you."),
                Segment(3661.001, 3662.9996, " Ask what you can do.")]
    text = "And so, my fellow Americans, ask not what your country can do for you. Ask what you can do."
    return Transcription(text, "en", segments, duration=3663.0, fallbacks=1, wall_seconds=36.63, info={"mode": "vad"})


EXPECTED_CUES = [(0.0, 2.5, "And so, my fellow Americans,"), (3.0, 7.25, "ask not what your country can do -> for you."),
                 (3661.001, 3663.0, "Ask what you can do.")]


def test_srt_and_vtt_parse_back_to_the_segments(tmp_path):
    import srt
    import webvtt

    paths = write_outputs(transcription(), tmp_path / "talk", FORMATS)
    assert paths == [str(tmp_path / f"talk.{f}") for f in FORMATS]
    subs = list(srt.parse((tmp_path / "talk.srt").read_text(encoding="utf-8")))
    assert [s.index for s in subs] == [1, 2, 3]  # the empty segment is skipped and the cues renumbered
    assert [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs] == EXPECTED_CUES
    captions = webvtt.from_string((tmp_path / "talk.vtt").read_text(encoding="utf-8")).captions

    def seconds(t):
        return t.hours * 3600 + t.minutes * 60 + t.seconds + t.milliseconds / 1000

    assert [(seconds(c.start_time), seconds(c.end_time), c.text) for c in captions] == EXPECTED_CUES
    assert "01:01:01,001 --> 01:01:03,000" in (tmp_path / "talk.srt").read_text()
    assert "01:01:01.001 --> 01:01:03.000" in (tmp_path / "talk.vtt").read_text()
    assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == transcription().text + "\n"


def test_timestamps():
    assert timestamp(0) == "00:00:00,000" and timestamp(-0.01) == "00:00:00,000"
    assert timestamp(59.9996) == "00:01:00,000" and timestamp(61.25, ".") == "00:01:01.250"
    assert timestamp(100 * 3600 + 0.5) == "100:00:00,500"


def test_json_output(tmp_path):
    write_outputs(transcription(), tmp_path / "talk", ["json"])
    assert sorted(os.listdir(tmp_path)) == ["talk.json"]
    out = json.loads((tmp_path / "talk.json").read_text(encoding="utf-8"))
    assert out["text"] == transcription().text and out["language"] == "en" and out["duration"] == 3663.0
    assert [(s["start"], s["end"], s["text"]) for s in out["segments"]] == [
        (s.start, s.end, s.text) for s in transcription().segments]  # every segment, in recording seconds
    assert out["segments"][0]["words"] == [{"start": 0.0, "end": 0.4, "word": " And", "probability": 0.9}]
    assert "words" not in out["segments"][1]
    assert out["fallbacks"] == 1 and out["real_time_factor"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="unknown output format"):
        write_outputs(transcription(), tmp_path / "talk", ["txt", "docx"])


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A write that fails after some bytes reached the disk leaves neither a target nor its temporary file; a
    complete file written earlier stays as it was."""
    write_outputs(transcription(), tmp_path / "old", ["srt"])
    before = (tmp_path / "old.srt").read_text()

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    for stem in ("new", "old"):
        with pytest.raises(OSError, match="No space"):
            write_outputs(transcription(), tmp_path / stem, ["srt"])
    assert sorted(os.listdir(tmp_path)) == ["old.srt"]
    assert (tmp_path / "old.srt").read_text() == before
