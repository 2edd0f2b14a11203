"""Recordings in, as 16 kHz mono float32: any format FFmpeg reads, through PyAV (which bundles FFmpeg).

wav, flac, mp3, m4a/aac, ogg/vorbis, opus, wma, and the audio track of a video (mp4, mkv, webm, mov), at any sample
rate and channel count. soundfile (`liteasr_hf.audio.decode`) covers only the libsndfile formats, which leaves out
the mp3 / m4a / video files people most often want transcribed.
"""

from __future__ import annotations

import io
import logging
import os
import sys

import numpy as np

from ..audio import SAMPLING_RATE, AudioError, to_mono_16k

logger = logging.getLogger(__name__)


def load_audio(source, name: str | None = None) -> np.ndarray:
    """Decode `source` to a float32 mono 16 kHz array.

    `source`: a path (str or PathLike), `-` (all of stdin's bytes), the bytes of a file, a numpy array (taken as
    16 kHz mono; a 2-D array's channels are averaged), or {"raw" or "array": array, "sampling_rate": sr} as
    transformers' ASR pipeline takes. `name` is what errors call it (default: the path, "stdin", "audio bytes" or
    "array"). Raises AudioError naming it for a missing, empty (0 bytes), corrupt or audio-less file, or non-finite
    samples. A file that decodes to no samples at all gives an empty array.
    """
    if isinstance(source, dict):
        array = source.get("raw", source.get("array"))
        if array is None or not source.get("sampling_rate"):
            raise AudioError(f"{name or 'audio dict'}: expected {{'raw' or 'array': samples, 'sampling_rate': rate}}, "
                             f"got keys {sorted(source)}")
        return _array(array, source["sampling_rate"], name or "audio dict")
    if isinstance(source, np.ndarray):
        return _array(source, SAMPLING_RATE, name or "array")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), name or "audio bytes", len(source))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path == "-":
            data = sys.stdin.buffer.read()
            return _decode(io.BytesIO(data), name or "stdin", len(data))
        name = name or path
        if not os.path.exists(path):
            raise AudioError(f"{name}: no such file")
        if os.path.isdir(path):
            raise AudioError(f"{name}: is a folder, not an audio file")
        return _decode(path, name, os.path.getsize(path))
    raise AudioError(f"{name or 'audio'}: cannot read audio from a {type(source).__name__}")


def _array(array, sampling_rate, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.size == 0:
        return np.zeros(0, dtype=np.float32)
    return to_mono_16k(array, sampling_rate, name)


def _decode(file, name: str, size: int) -> np.ndarray:
    import av

    if size == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    try:
        with av.open(file, metadata_errors="ignore") as container:
            if not container.streams.audio:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise AudioError(f"{name}: no audio stream ({container.format.name} with streams: {', '.join(kinds)})")
            stream = container.streams.audio[0]
            if not stream.codec_context.sample_rate:  # a demuxer chosen by the file's extension found no header
                raise AudioError(f"{name}: cannot decode audio (corrupt data, or not a {container.format.name} file)")
            # Float samples with the source's channels, averaged below: FFmpeg's own downmix to mono does not
            # normalize float output (stereo comes out 1.41x louder than either channel).
            resampler = av.AudioResampler(format="fltp", rate=SAMPLING_RATE)
            chunks, bad = [], 0
            for packet in container.demux(stream):
                try:  # a damaged packet is skipped, as the ffmpeg command line does, rather than losing the file
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    bad += 1
                    continue
                for frame in frames:
                    chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except av.error.FFmpegError as e:
        raise AudioError(f"{name}: cannot decode audio ({e.strerror or type(e).__name__}; corrupt or not a "
                         "format FFmpeg reads)") from e
    if bad and not chunks:
        raise AudioError(f"{name}: cannot decode audio ({bad} corrupt packet(s), none readable)")
    if bad:
        logger.warning("%s: skipped %d undecodable packet(s)", name, bad)
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    audio = np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return audio


def probe_duration(path) -> float | None:
    """Seconds of audio a file's header declares (None when it declares none or cannot be read); cheap, for
    progress totals, not exact (an mp3 without a Xing header gives an estimate from its bit rate)."""
    import av

    try:
        with av.open(os.fspath(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return container.duration / av.time_base if container.duration is not None else None
    except (av.error.FFmpegError, OSError, ValueError):
        return None
