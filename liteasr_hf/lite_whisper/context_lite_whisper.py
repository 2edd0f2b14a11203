"""The encoder's context plan: how much of Whisper's 30 s window the encoder runs on, decided once per call.

Ships inside checkpoints (trust_remote_code): import siblings with single-dot imports only.

`ContextSettings` is what a config (or a caller, per call) asks for: context buckets in seconds, the margin of padding
kept after the audio, the padding stride. `ContextSettings.plan(...)` turns them and the audio's length into a
`ContextPlan`: the mel frames the encoder reads, the encoder positions that hold audio plus margin, and the stride
past them. Every consumer (the encoder, the feature extraction that cuts features to the plan, the transcriber that
batches pieces by their plan) takes the plan as an argument; nothing re-derives it.
"""

from dataclasses import dataclass, replace

import torch

# One encoder position covers two 10 ms mel frames.
ENCODER_FRAME_SECONDS = 0.02
MEL_FRAME_SECONDS = ENCODER_FRAME_SECONDS / 2


def check_context(buckets, margin, max_seconds: float, where: str = "encoder_context_buckets") -> None:
    """Raise ValueError naming the field unless `buckets` is None or ascending seconds in (0, max_seconds], each a whole
    number of encoder frames (20 ms), and `margin` is seconds >= 0."""
    margin_field = where.replace("buckets", "margin")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"{margin_field} must be a number of seconds >= 0, got {margin!r}")
    if buckets is None:
        return
    if isinstance(buckets, (str, bytes)) or not hasattr(buckets, "__iter__"):
        raise ValueError(f"{where} must be a list of seconds or None (full 30 s window), got {buckets!r}")
    buckets = list(buckets)
    if not buckets:
        raise ValueError(f"{where} is empty: give at least one context length in seconds, or None for the full window")
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= max_seconds:
            raise ValueError(f"{where}: {b!r} is not a number of seconds in (0, {max_seconds:g}]")
        frames = b / ENCODER_FRAME_SECONDS
        if abs(frames - round(frames)) > 1e-6:
            raise ValueError(f"{where}: {b!r} s is not a whole number of encoder frames ({ENCODER_FRAME_SECONDS} s each)")
    if any(not a < b for a, b in zip(buckets, buckets[1:])):
        raise ValueError(f"{where} must ascend, got {buckets}")


def check_padding_stride(stride, max_frames: int, where: str = "encoder_padding_stride") -> None:
    """Raise ValueError naming the field unless `stride` is a whole number of encoder frames in [1, max_frames]."""
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max_frames:
        raise ValueError(f"{where} must be a whole number of encoder frames in [1, {max_frames}] (1: every frame), "
                         f"got {stride!r}")


@dataclass(frozen=True)
class ContextPlan:
    """One encoder call's context: `frames` mel frames (a bucket, or the whole window), of which the encoder computes
    the first `dense_positions` encoder positions one by one and the rest one in `stride` (`padding_groups`).
    `dense_positions` None: every position."""

    frames: int
    dense_positions: int | None = None
    stride: int = 1

    @property
    def positions(self) -> int:
        """Encoder positions (and decoder cross-attention keys) of this context."""
        return self.frames // 2

    @property
    def seconds(self) -> float:
        return self.frames * MEL_FRAME_SECONDS

    def groups(self, device=None):
        """(index of the position each computed row stands at, positions it stands for) or None when every position
        is computed."""
        if self.dense_positions is None or self.stride == 1 or self.dense_positions >= self.positions - 1:
            return None
        return padding_groups(self.positions, self.dense_positions, self.stride, device)


@dataclass(frozen=True)
class ContextSettings:
    """What the encoder's context follows: `buckets` (ascending seconds; None: the full window, as Whisper), `margin`
    (seconds of padding kept after the audio), `padding_stride` (1: every frame). `full_frames`: the window in mel
    frames (3,000 for every Whisper)."""

    buckets: tuple | None = None
    margin: float = 1.0
    padding_stride: int = 1
    full_frames: int = 3000

    def __post_init__(self):
        check_context(self.buckets, self.margin, self.full_frames * MEL_FRAME_SECONDS)
        check_padding_stride(self.padding_stride, self.full_frames // 2)
        object.__setattr__(self, "buckets", None if self.buckets is None else tuple(float(b) for b in self.buckets))
        object.__setattr__(self, "margin", float(self.margin))

    @classmethod
    def from_config(cls, config) -> "ContextSettings":
        """The settings a (lite-)Whisper config asks for; a config without the fields (dense Whisper, published lite
        checkpoints) runs the full window."""
        return cls(getattr(config, "encoder_context_buckets", None), getattr(config, "encoder_context_margin", 1.0),
                   getattr(config, "encoder_padding_stride", 1), config.max_source_positions * 2)

    def replace(self, **overrides) -> "ContextSettings":
        """These settings with `buckets`, `margin` and / or `padding_stride` changed (validated)."""
        return replace(self, **overrides)

    @property
    def dynamic(self) -> bool:
        """Whether the plan depends on the audio's length."""
        return self.buckets is not None or self.padding_stride > 1

    def plan(self, audio_frames: int) -> ContextPlan:
        """The plan for audio of `audio_frames` mel frames (a batch: its longest): the smallest bucket holding the
        audio plus the margin, else (and always without buckets) the full window; past audio + margin, the stride."""
        if not self.dynamic:
            return ContextPlan(self.full_frames)
        need = int(audio_frames) + round(self.margin / MEL_FRAME_SECONDS)
        frames = self.full_frames
        for seconds in self.buckets or ():
            if round(seconds / MEL_FRAME_SECONDS) >= need:
                frames = min(round(seconds / MEL_FRAME_SECONDS), self.full_frames)
                break
        dense = -(-need // 2) if self.padding_stride > 1 else None  # two mel frames an encoder position
        return ContextPlan(frames, dense, self.padding_stride)

    def plan_samples(self, samples: int, hop_length: int = 160) -> ContextPlan:
        """The plan for audio of `samples` samples (16 kHz; the feature extractor's hop)."""
        return self.plan(-(-int(samples) // hop_length))

    def plan_features(self, input_features, attention_mask=None) -> ContextPlan:
        """The plan for a batch of log-mel features (its longest audio, see `audio_frames`)."""
        if not self.dynamic:
            return ContextPlan(self.full_frames)
        return self.plan(int(audio_frames(input_features, attention_mask).max()))


# generate()'s per-call overrides of a config's context settings, by keyword
OVERRIDE_KEYWORDS = {"encoder_context_buckets": "buckets", "encoder_context_margin": "margin",
                     "encoder_padding_stride": "padding_stride"}


def pop_context(settings: ContextSettings, kwargs: dict):
    """Take the encoder context one call asks for out of its keyword arguments: `encoder_context` (a ContextSettings or
    ContextPlan), or `settings` with any of `OVERRIDE_KEYWORDS` applied (validated); None when it asks for none."""
    overrides = {OVERRIDE_KEYWORDS[k]: kwargs.pop(k) for k in list(kwargs) if k in OVERRIDE_KEYWORDS}
    context = kwargs.pop("encoder_context", None)
    if overrides:
        if context is not None:
            raise ValueError("give encoder_context or the encoder_context_* / encoder_padding_stride overrides, not both")
        context = settings.replace(**overrides)
    return context


def audio_frames(input_features, attention_mask=None):
    """Mel frames per row [B] up to the last one holding audio. From the feature extractor's attention mask where it
    matches the features (the pipeline and long-form generate pass one for the whole recording, which does not match
    a 30 s segment); else from the features: padding frames are constant over the mel bins, both the log-mel floor
    the feature extractor writes for zero samples and the zeros long-form generate pads its last segment with."""
    batch, _, length = input_features.shape
    if attention_mask is not None and tuple(attention_mask.shape) == (batch, length):
        return attention_mask.to(torch.long).sum(-1)
    audio = input_features.amax(1) - input_features.amin(1) > 1e-6  # [B, T]
    position = torch.arange(1, length + 1, device=input_features.device)
    return (audio * position).amax(-1)


def padding_groups(frames: int, dense_frames: int, stride: int, device=None):
    """The positions the encoder runs on when frames past `dense_frames` (the audio plus the margin) are taken one
    in `stride`: (index [N] of each position's frame, frames each stands for [N]). Frames [0, dense_frames) stand for
    themselves; the rest fall in groups of `stride` consecutive frames (the last one shorter), each represented by its
    middle frame. A group's frames carry the same features (padding) and neighbouring positions, so the encoder
    computes one and lets it count `stride` times in attention: log(count) added to its attention scores is softmax
    over `count` copies of it."""
    dense_frames = min(dense_frames, frames)
    starts = torch.arange(dense_frames, frames, stride, device=device)
    counts = torch.clamp(frames - starts, max=stride)
    index = torch.cat([torch.arange(dense_frames, device=device), starts + (counts - 1) // 2])
    return index, torch.cat([torch.ones(dense_frames, dtype=counts.dtype, device=device), counts])


def padding_frames(input_features, frames: int):
    """The frames WhisperFeatureExtractor writes for zero samples, from `input_features`' length up to `frames`:
    it clamps log10 power at (clip max - 8) and maps x to (x + 4) / 4, so padding sits 2 below each clip's maximum,
    or at (log10(1e-10) + 4) / 4 = -1.5 when the clip is quieter than that clamp."""
    floor = torch.clamp(input_features.amax(dim=(1, 2), keepdim=True) - 2.0, min=-1.5)
    return floor.expand(-1, input_features.shape[1], frames - input_features.shape[-1])


def fit_features(input_features, plan: ContextPlan):
    """The features cut or padded (as the feature extractor pads, `padding_frames`) to `plan.frames`."""
    if plan.frames < input_features.shape[-1]:
        return input_features[..., : plan.frames]
    if plan.frames > input_features.shape[-1]:
        return torch.cat([input_features, padding_frames(input_features, plan.frames)], dim=-1)
    return input_features
