"""A transcription as files: plain text, SRT and WebVTT subtitles, JSON.

Every file is written to a temporary name in its folder and renamed into place, so a file under its final name is
always complete: a run killed mid-way leaves no half-written transcript that a resumed run would take as done.
"""

from __future__ import annotations

import json
import os
import uuid

from .result import Transcription

FORMATS = ("txt", "srt", "vtt", "json")


def write_outputs(transcription: Transcription, stem_path, formats=FORMATS) -> list[str]:
    """Write `<stem_path>.<format>` for each of `formats`; returns the paths written, in that order."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown output format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    render = {"txt": _txt, "srt": _srt, "vtt": _vtt, "json": _json}
    paths = []
    for fmt in formats:
        path = f"{os.fspath(stem_path)}.{fmt}"
        write_atomic(path, render[fmt](transcription))
        paths.append(path)
    return paths


def write_atomic(path: str, text: str) -> None:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it to `path`."""
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def timestamp(seconds: float, separator: str = ",") -> str:
    """HH:MM:SS,mmm (SRT) or, with separator ".", HH:MM:SS.mmm (WebVTT); hours grow past 99 when they must."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _cues(transcription: Transcription):
    """(start, end, one-line text) of the segments that have text. A cue's text may hold neither a blank line (it
    ends the cue) nor "-->" (it starts one), and its end may not come before its start."""
    for s in transcription.segments:
        text = " ".join(s.text.split()).replace("-->", "->")
        if text:
            yield s.start, max(s.start, s.end), text


def _txt(t: Transcription) -> str:
    text = t.text.strip()
    return text + "\n" if text else ""


def _srt(t: Transcription) -> str:
    return "".join(f"{i}\n{timestamp(start)} --> {timestamp(end)}\n{text}\n\n"
                   for i, (start, end, text) in enumerate(_cues(t), 1))


def _vtt(t: Transcription) -> str:
    return "WEBVTT\n\n" + "".join(f"{timestamp(start, '.')} --> {timestamp(end, '.')}\n{text}\n\n"
                                  for start, end, text in _cues(t))


def _json(t: Transcription) -> str:
    return json.dumps(t.to_dict(), ensure_ascii=False, indent=2, default=str) + "\n"
