"""Speech in: a local `audiofolder` or a Hub dataset, as 16 kHz mono float32 clips.

Shared by calibration and evaluation. Decoding goes through soundfile rather than datasets' `Audio`
feature, whose decoder (torchcodec) needs FFmpeg shared libraries that many machines lack; datasets
still does what it is good at for Hub datasets (resolving, streaming, column access).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .conversion import first_line, looks_like_path

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16_000
WINDOW_SECONDS = 30
TEXT_COLUMNS = ("transcription", "text", "sentence", "normalized_text", "transcript")
BUNDLED_CLIPS = os.path.join(os.path.dirname(__file__), "data", "clips")


class AudioError(ValueError):
    """A clip that cannot be used: empty, non-finite, unreadable, or of an unsupported shape."""


@dataclass
class Clip:
    id: str
    audio: np.ndarray  # float32, mono, SAMPLING_RATE
    text: str | None = None
    source: str | None = None
    speaker: str | None = None
    language: str | None = None  # a Whisper language code ("de"), from a `language` column where the data has one

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLING_RATE


def to_mono_16k(array, sampling_rate: int, name: str = "clip") -> np.ndarray:
    """Average channels, resample to 16 kHz, check the result is usable speech input."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:  # soundfile gives [frames, channels]; some datasets give [channels, frames]
        array = array.mean(axis=1 if array.shape[0] > array.shape[1] else 0)
    if array.ndim != 1:
        raise AudioError(f"{name}: expected mono or stereo audio, got an array of shape {array.shape}")
    if not sampling_rate or sampling_rate <= 0:
        raise AudioError(f"{name}: invalid sampling rate {sampling_rate!r}")
    if sampling_rate != SAMPLING_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(int(sampling_rate), SAMPLING_RATE)
        array = resample_poly(array, SAMPLING_RATE // g, int(sampling_rate) // g).astype(np.float32)
    if array.size == 0:
        raise AudioError(f"{name}: empty audio")
    if not np.isfinite(array).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return array


def windows(audio: np.ndarray, seconds: int = WINDOW_SECONDS) -> list[np.ndarray]:
    """Cut audio longer than Whisper's 30 s window into consecutive windows (the last one shorter)."""
    step = seconds * SAMPLING_RATE
    return [audio[i : i + step] for i in range(0, len(audio), step)] or [audio]


def decode(path_or_bytes, name: str) -> np.ndarray:
    import soundfile as sf

    try:
        data, sr = sf.read(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes, dtype="float32")
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for corrupt files
        raise AudioError(f"{name}: cannot decode audio ({e})") from e
    return to_mono_16k(data, sr, name)


def _read_metadata(folder: str) -> list[dict]:
    for fname in ("metadata.csv", "metadata.jsonl"):
        path = os.path.join(folder, fname)
        if os.path.exists(path):
            with open(path, newline="", encoding="utf-8") as f:
                if fname.endswith(".csv"):
                    return list(csv.DictReader(f))
                return [json.loads(line) for line in f if line.strip()]
    exts = (".flac", ".wav", ".mp3", ".ogg")
    return [{"file_name": n} for n in sorted(os.listdir(folder)) if n.lower().endswith(exts)]


def _text_column(columns: Sequence[str], text_column: str | None, where: str) -> str | None:
    if text_column:
        if text_column not in columns:
            raise ValueError(f"{where}: no column {text_column!r} (columns: {', '.join(columns)})")
        return text_column
    return next((c for c in TEXT_COLUMNS if c in columns), None)


def load_clips(
    dataset: str | None = None,
    *,
    split: str | None = None,
    config: str | None = None,
    audio_column: str = "audio",
    text_column: str | None = None,
    files: Sequence[str] | None = None,
    limit: int | None = None,
    require_text: bool = False,
    shuffle_seed: int | None = None,
) -> list[Clip]:
    """Load clips from a local audiofolder (metadata.csv/jsonl + audio files) or a Hub dataset id.

    `dataset=None` means the clips shipped inside the package. `files` keeps only those file names
    (e.g. one side of a `split.json`); for a local folder `split` may also name a key of its
    `split.json`. Unreadable or empty clips are skipped with a warning and counted in the log. `shuffle_seed`: a Hub
    dataset streams through datasets' seeded shuffle buffer (1,000 rows), so `limit` draws clips rather than taking
    the first ones.
    """
    if files is not None and not (dataset is None or os.path.isdir(dataset)):
        raise ValueError(f"{dataset}: a list of files (a split file) selects from a local folder, not a Hub dataset; "
                         "use its split instead")
    if dataset is None:
        dataset = BUNDLED_CLIPS
    if os.path.isdir(dataset):
        clips = _load_folder(dataset, split, text_column, files, limit)
    elif looks_like_path(dataset):
        raise ValueError(f"no dataset folder {dataset}")
    else:
        try:
            clips = _load_hub(dataset, split, config, audio_column, text_column, limit, shuffle_seed)
        except OSError as e:  # offline, or no such dataset on the Hub
            name = f"{dataset}/{config}" if config else dataset
            raise ValueError(f"{name}: not a local folder, and not a Hub dataset reachable now ({first_line(e)})") from e
    if not clips:
        raise ValueError(f"{dataset}: no usable audio clips" + (f" in split {split!r}" if split else ""))
    if require_text and any(c.text is None for c in clips):
        raise ValueError(f"{dataset}: no transcript column found (looked for {', '.join(TEXT_COLUMNS)}); pass text_column")
    return clips


def _load_folder(folder, split, text_column, files, limit) -> list[Clip]:
    rows = _read_metadata(folder)
    if split is not None:
        split_path = os.path.join(folder, "split.json")
        if not os.path.exists(split_path):
            raise ValueError(f"{folder}: split {split!r} requested but the folder has no split.json")
        splits = json.load(open(split_path))
        if split not in splits or not isinstance(splits[split], list):
            names = [k for k, v in splits.items() if isinstance(v, list) and v and isinstance(v[0], str) and "." in v[0]]
            raise ValueError(f"{folder}: split.json has no split {split!r} (has: {', '.join(names)})")
        keep = set(splits[split])
        rows = [r for r in rows if r["file_name"] in keep]
    if files is not None:
        keep = set(files)
        rows = [r for r in rows if r["file_name"] in keep]
    col = _text_column(list(rows[0].keys()) if rows else [], text_column, folder)
    clips, skipped = [], 0
    for row in rows[:limit] if limit else rows:
        name = row["file_name"]
        try:
            audio = decode(os.path.join(folder, name), name)
        except AudioError as e:
            logger.warning("skipping %s", e)
            skipped += 1
            continue
        text = row.get(col) if col else None
        clips.append(Clip(name, audio, text, row.get("source") or None, row.get("speaker") or None, row.get("language") or None))
    if skipped:
        logger.warning("%s: skipped %d unusable clip(s) of %d", folder, skipped, skipped + len(clips))
    return clips


def _load_hub(dataset, split, config, audio_column, text_column, limit, shuffle_seed=None) -> list[Clip]:
    from datasets import Audio, load_dataset

    ds = load_dataset(dataset, config, split=split or "test", streaming=True)
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed, buffer_size=1000)
    columns = list(ds.features.keys()) if ds.features else []
    if columns and audio_column not in columns:
        raise ValueError(f"{dataset}: no audio column {audio_column!r} (columns: {', '.join(columns)})")
    col = _text_column(columns, text_column, dataset)
    ds = ds.cast_column(audio_column, Audio(decode=False))
    clips, skipped = [], 0
    for i, row in enumerate(ds):
        if limit and len(clips) >= limit:
            break
        audio = row[audio_column]
        name = str(row.get("id") or audio.get("path") or i)
        try:
            array = decode(audio["bytes"] if audio.get("bytes") else audio["path"], name)
        except AudioError as e:
            logger.warning("skipping %s", e)
            skipped += 1
            continue
        clips.append(Clip(name, array, row.get(col) if col else None, dataset if not config else f"{dataset}/{config}",
                          language=row.get("language") or None))
    if skipped:
        logger.warning("%s: skipped %d unusable clip(s)", dataset, skipped)
    return clips


def window_items(clips: Sequence[Clip]) -> list[tuple[str, np.ndarray]]:
    """(id, audio) of each clip's 30 s windows (`id#i` after the first), for work that sees the encoder's
    fixed input length: calibration statistics, sensitivity probes, refinement."""
    return [(f"{c.id}#{i}" if i else c.id, w) for c in clips for i, w in enumerate(windows(c.audio))]


def split_files(split_file: str, split: str) -> list[str]:
    """The file names a split file ({split name: [file names]}, JSON) lists under `split`."""
    try:
        with open(split_file) as f:
            splits = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read the split file {split_file} ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{split_file} is not valid JSON ({e})") from e
    if split not in splits or not isinstance(splits[split], list):
        raise ValueError(f"{split_file} has no split {split!r} (has: {', '.join(k for k, v in splits.items() if isinstance(v, list))})")
    return splits[split]


def calibration_clips(dataset: str | None = None, *, split: str | None = None, split_file: str | None = None,
                      config: str | None = None, audio_column: str = "audio", num_clips: int | None = None,
                      seed: int = 0) -> tuple[list[Clip], str]:
    """(clips, description) of one calibration dataset: a local folder (its split.json's `calibration` split when it
    has one, unless `split` / `split_file` say otherwise) or a Hub dataset (`split`, default train). `split_file`: a
    JSON file mapping split names to file names of the local folder (`split` picks the key, default calibration).
    `num_clips`: that many, drawn with `seed` (a Hub dataset: through a seeded shuffle buffer)."""
    import random

    if num_clips is not None and num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}")
    local = dataset is None or os.path.isdir(dataset)
    folder = dataset or BUNDLED_CLIPS
    files = None
    if split_file:
        if not local:
            raise ValueError(f"a split file selects files of a local folder; {dataset} is a Hub dataset: use its split")
        key = split or "calibration"
        files, split = split_files(split_file, key), None
        used = f"split file {os.path.basename(split_file)} [{key}]"
    else:
        if local and split is None and os.path.exists(os.path.join(folder, "split.json")):
            with open(os.path.join(folder, "split.json")) as f:
                split = "calibration" if "calibration" in json.load(f) else None
        used = split
    if local:
        clips = load_clips(folder, split=split, files=files)
    else:
        clips = load_clips(dataset, split=split or "train", config=config, audio_column=audio_column, limit=num_clips,
                           shuffle_seed=seed if num_clips else None)
        used = split or "train"
    if num_clips and num_clips < len(clips):
        clips = random.Random(seed).sample(clips, num_clips)
    name = "liteasr_hf shipped clips" if dataset is None else dataset
    return clips, name + (f" [{used}]" if used else "")
