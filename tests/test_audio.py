"""Speech in (liteasr_hf.audio): what reaches calibration and evaluation is 16 kHz mono float32, and bad audio or a
bad folder is named, not passed on."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf

from liteasr_hf.audio import SAMPLING_RATE, AudioError, load_clips, to_mono_16k, window_items, windows


def tone(hz: float, seconds: float, rate: int) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate).astype(np.float32)


def peak_hz(audio: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(audio)))) * SAMPLING_RATE / len(audio)


def test_stereo_is_averaged_in_either_layout():
    left, right = tone(440, 1, SAMPLING_RATE), np.zeros(SAMPLING_RATE, np.float32)
    for stereo in (np.stack([left, right], axis=1), np.stack([left, right], axis=0)):  # soundfile's layout, channels first
        np.testing.assert_array_equal(to_mono_16k(stereo, SAMPLING_RATE), left / 2)


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_other_rates_are_resampled_keeping_the_pitch(rate):
    out = to_mono_16k(tone(440, 2, rate), rate)
    assert out.dtype == np.float32 and len(out) == 2 * SAMPLING_RATE
    assert abs(peak_hz(out) - 440) <= 0.5  # the FFT bin is 0.5 Hz wide over 2 s


@pytest.mark.parametrize("audio, rate, message", [
    (np.zeros(0, np.float32), SAMPLING_RATE, "empty audio"),
    (np.zeros(0, np.float32), 44_100, "empty audio"),
    (np.array([0.1, np.nan, 0.2], np.float32), SAMPLING_RATE, "NaN or infinite"),
    (np.array([0.1, np.inf, 0.2], np.float32), 8_000, "NaN or infinite"),
    (np.zeros((2, 2, 100), np.float32), SAMPLING_RATE, "mono or stereo"),
    (np.zeros(100, np.float32), 0, "invalid sampling rate"),
])
def test_unusable_audio_is_named(audio, rate, message):
    with pytest.raises(AudioError, match=f"my.wav: .*{message}"):
        to_mono_16k(audio, rate, "my.wav")


def test_long_audio_is_cut_into_30_s_windows():
    audio = np.zeros(65 * SAMPLING_RATE, np.float32)
    assert [len(w) / SAMPLING_RATE for w in windows(audio)] == [30, 30, 5]
    assert windows(np.zeros(10, np.float32))[0].shape == (10,)


def make_folder(folder):
    """An audiofolder with one good clip (stereo, 44.1 kHz, 65 s), one corrupt file and one empty wav."""
    folder.mkdir()
    sf.write(folder / "good.flac", np.stack([tone(300, 65, 44_100)] * 2, axis=1), 44_100)
    (folder / "corrupt.flac").write_bytes(b"not audio at all" * 10)
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), SAMPLING_RATE)
    (folder / "metadata.csv").write_text("file_name,transcription\ngood.flac,a tone\ncorrupt.flac,x\nempty.wav,y\n")
    return folder


def test_a_folder_keeps_the_usable_clips_and_says_what_it_skipped(tmp_path, caplog):
    folder = make_folder(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="liteasr_hf.audio"):
        clips = load_clips(str(folder), require_text=True)
    assert [(c.id, c.text, c.audio.dtype, c.audio.ndim) for c in clips] == [("good.flac", "a tone", np.float32, 1)]
    assert len(clips[0].audio) == 65 * SAMPLING_RATE
    assert "corrupt.flac: cannot decode audio" in caplog.text and "empty.wav: empty audio" in caplog.text
    assert "skipped 2 unusable clip(s) of 3" in caplog.text
    assert [i for i, _ in window_items(clips)] == ["good.flac", "good.flac#1", "good.flac#2"]


def test_a_folder_with_no_usable_clip_or_a_missing_split_is_an_error(tmp_path):
    folder = make_folder(tmp_path / "data")
    (folder / "good.flac").unlink()
    with pytest.raises(ValueError, match="no usable audio clips"):
        load_clips(str(folder))
    with pytest.raises(ValueError, match="split 'calibration' requested but the folder has no split.json"):
        load_clips(str(folder), split="calibration")
    (folder / "split.json").write_text(json.dumps({"calibration": ["empty.wav"], "evaluation": ["corrupt.flac"]}))
    with pytest.raises(ValueError, match=r"split.json has no split 'test' \(has: calibration, evaluation\)"):
        load_clips(str(folder), split="test")


def _hub_stand_in(monkeypatch, n=30):
    """datasets.load_dataset replaced by a local streaming dataset of n one-second clips named 0..n-1."""
    import io

    import datasets
    import soundfile as sf

    def flac(i):
        buf = io.BytesIO()
        sf.write(buf, np.full(16000, 0.01 * (i + 1), dtype=np.float32), 16000, format="FLAC")
        return buf.getvalue()

    rows = {"id": [str(i) for i in range(n)], "audio": [{"bytes": flac(i), "path": None} for i in range(n)],
            "text": [f"clip {i}" for i in range(n)]}
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False)).to_iterable_dataset()
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: ds)


def test_hub_limit_draws_with_the_seed(monkeypatch):
    from liteasr_hf.audio import load_clips

    _hub_stand_in(monkeypatch)
    first = [c.id for c in load_clips("someone/speech", limit=5)]
    drawn = [c.id for c in load_clips("someone/speech", limit=5, shuffle_seed=0)]
    assert first == ["0", "1", "2", "3", "4"]
    assert drawn != first and drawn == [c.id for c in load_clips("someone/speech", limit=5, shuffle_seed=0)]
    assert drawn != [c.id for c in load_clips("someone/speech", limit=5, shuffle_seed=1)]


def test_a_split_file_with_a_hub_dataset_is_an_error(monkeypatch):
    from liteasr_hf.audio import load_clips

    _hub_stand_in(monkeypatch)
    with pytest.raises(ValueError, match="selects from a local folder, not a Hub dataset"):
        load_clips("someone/speech", files=["0"])
