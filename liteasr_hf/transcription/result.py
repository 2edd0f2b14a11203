"""What a transcription returns: segments with times in the recording, the language, the whole text."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float | None = None


@dataclass
class Segment:
    start: float  # seconds from the start of the recording
    end: float
    text: str
    words: list[Word] | None = None


@dataclass
class Transcription:
    text: str
    language: str | None
    segments: list[Segment]
    duration: float  # seconds of audio
    fallbacks: int = 0  # pieces the loop guard decoded again with a safer setting
    loops: int = 0  # pieces still repetitive after every fallback
    wall_seconds: float = 0.0
    info: dict = field(default_factory=dict)  # how it ran: mode, batch size, pieces, device, dtype

    @property
    def real_time_factor(self) -> float:
        """Wall time over audio time (0.05: 20x faster than real time)."""
        return self.wall_seconds / self.duration if self.duration else 0.0

    def to_dict(self) -> dict:
        """JSON form: text, language, duration, segments [{start, end, text(, words)}], fallbacks, loops, info."""
        out = asdict(self)
        for segment in out["segments"]:
            if segment["words"] is None:
                del segment["words"]
        out["real_time_factor"] = self.real_time_factor
        return out
