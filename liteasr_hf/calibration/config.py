"""`CompressionConfig`: every choice of a LiteASR compression, validated on construction and written into the
checkpoint's calibration.json, so a checkpoint says exactly how it was made and can be remade from it.

    config = CompressionConfig(target_size=0.65, refine_steps=90)
    CompressionConfig.from_dict(json.load(open("lite/calibration.json"))["config"]) == config
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence

from .features import DEFAULT_PADDING_WEIGHT
from .ranks import PRESET_ALIASES, PRESETS, check_theta, preset_thetas

DEFAULT_TARGET_SIZE = 0.8
# Clips built from speech-dev's calibration clips to sit at the top of each bucket (docs/benchmarks.md, "top-of-bucket
# clips"): at a 10 s context the decoder ran into repetition loops on 8-9 s of speech (11-13 of 70 in fp32, bf16 and
# int8), at 15 and 20 s on none of 64. "auto" = these, those shorter than the model's window.
DEFAULT_CONTEXT_BUCKETS = (15.0, 20.0)
# Past the audio + margin, one padding frame in 4 computed (LiteWhisperConfig.encoder_padding_stride): on speech-dev's
# calibration clips, base 80 %, no transcript changed at 4 (two changed at 2 and at 6), 8 looped once (docs/benchmarks.md,
# run 13).
DEFAULT_PADDING_STRIDE = 4
ALLOCATIONS = ("sensitivity", "variance")
SEQUENTIAL_MODES = ("off", "self", "dense", "dense+residual")
REFINE_TRAIN = ("factors", "factors+norms", "all")


def _choice(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _number(value, name, *, low=None, high=None, low_open=False, integer=False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


@dataclass
class CompressionConfig:
    """How to compress a Whisper encoder. With no argument: ranks for 80 % of the dense encoder, allocated by
    measured sensitivity, 50/50 real/padding statistics, dynamic encoder context 10 / 15 / 20 s.

    Size (one of two ways):
        target_size: encoder parameters as a fraction of dense, in (0, 1]; ranks allocated greedily by `allocation`
            ("sensitivity": each linear's measured effect on the encoder output per parameter; "variance": its own
            variance kept per parameter). The default (0.8) when neither a preset nor a θ is given.
        preset / theta_attn / theta_mlp: the paper's θ rule (variance kept per linear, eq. 6 + 8); presets
            quality / balanced / fast (or a / b / c). A θ alone takes the other from the preset (default balanced).
    Statistics and factors:
        padding_weight: share of the statistics given to padding frames, in [0, 1]; None = every frame alike (paper).
        sequential: "off" (the paper: every linear from the dense statistics), "self", "dense" or "dense+residual"
            (layer by layer, each linear fitted to undo upstream error; ~10x slower).
        probe_clips: the first this many calibration windows measure each linear's sensitivity.
        stages: compress progressively through these sizes (descending, above target_size), each stage re-measured and
            refined.
    Refinement (off with refine_steps=0): Adam on the factors (`refine_train`) for at most `refine_steps`, learning
        rate `refine_lr` reached after `refine_warmup` steps, loss the encoder-output MSE plus `refine_kl` x the
        decoder KL on the dense model's transcripts; `refine_context` refines at the dynamic context (KL only).
    Dynamic encoder context (written into config.json): context_buckets, seconds ascending, "auto" (10 / 15 / 20 s,
        those shorter than the model's window) or None (always the full window); context_margin, seconds of padding
        kept after the audio; padding_stride, past those the encoder runs on one padding frame in this many (1: every
        frame).
    seed: the refinement's held-back clips and batches.
    """

    target_size: float | None = None
    preset: str | None = None
    theta_attn: float | None = None
    theta_mlp: float | None = None
    allocation: str = "sensitivity"
    padding_weight: float | None = DEFAULT_PADDING_WEIGHT
    sequential: str = "off"
    probe_clips: int = 8
    stages: Sequence[float] = ()
    refine_steps: int = 0
    refine_lr: float = 1e-4
    refine_warmup: int = 0
    refine_train: str = "factors"
    refine_kl: float = 0.0
    refine_context: bool = False
    context_buckets: Sequence[float] | str | None = "auto"
    context_margin: float = 1.0
    padding_stride: int = DEFAULT_PADDING_STRIDE
    seed: int = 0

    def __post_init__(self):
        theta_given = self.preset is not None or self.theta_attn is not None or self.theta_mlp is not None
        if self.target_size is not None and theta_given:
            raise ValueError("target_size and preset / theta_attn / theta_mlp are two ways to set the size: give one")
        if self.target_size is None and not theta_given:
            self.target_size = DEFAULT_TARGET_SIZE
        if self.target_size is not None:
            _number(self.target_size, "target_size", low=0.0, low_open=True, high=1.0)
        else:
            self.preset = PRESET_ALIASES.get(self.preset, self.preset or "balanced")
            preset_thetas(self.preset)  # unknown preset: ValueError naming the choices
            for name in ("theta_attn", "theta_mlp"):
                if getattr(self, name) is not None:
                    _number(getattr(self, name), name)
                    check_theta(getattr(self, name), name)
        _choice(self.allocation, ALLOCATIONS, "allocation")
        if self.padding_weight is not None:
            _number(self.padding_weight, "padding_weight", low=0.0, high=1.0)
        _choice(self.sequential, SEQUENTIAL_MODES, "sequential")
        _number(self.probe_clips, "probe_clips", low=1, integer=True)
        self.stages = tuple(self.stages)
        if self.stages:
            for s in self.stages:
                _number(s, "stages")
            if self.target_size is None:
                raise ValueError("stages need target_size (stages are sizes, not θ presets)")
            if self.sequential != "off":
                raise ValueError("stages do not combine with sequential calibration")
            sizes = [*self.stages, self.target_size]
            if any(not a > b for a, b in zip(sizes, sizes[1:])) or not sizes[0] < 1.0:
                raise ValueError(f"stages must descend from below 1 to above target_size {self.target_size}, got {list(self.stages)}")
        for name in ("refine_steps", "refine_warmup", "seed"):
            _number(getattr(self, name), name, low=0, integer=True)
        _number(self.refine_lr, "refine_lr", low=0.0, low_open=True)
        _number(self.refine_kl, "refine_kl", low=0.0)
        _choice(self.refine_train, REFINE_TRAIN, "refine_train")
        if self.context_buckets != "auto" and self.context_buckets is not None:
            if isinstance(self.context_buckets, (str, bytes)):
                raise ValueError(f"context_buckets must be seconds, 'auto' or None, got {self.context_buckets!r}")
            self.context_buckets = tuple(self.context_buckets)
        self.check_context(30.0)
        _number(self.padding_stride, "padding_stride", low=1, integer=True)
        if self.refine_context and (not self.refine_steps or not self.refine_kl or self.context_buckets is None):
            raise ValueError("refine_context needs refine_steps > 0, refine_kl > 0 and context_buckets other than None")

    # ---- derived ---------------------------------------------------------------------------------

    @property
    def thetas(self) -> tuple[float, float] | None:
        """(θ attention, θ MLP) of the θ rule; None with a target size."""
        if self.target_size is not None:
            return None
        ta, tm = preset_thetas(self.preset)
        return (ta if self.theta_attn is None else self.theta_attn, tm if self.theta_mlp is None else self.theta_mlp)

    @property
    def label(self) -> str:
        """A short name for output folders: size80, fast, custom."""
        if self.target_size is not None:
            return f"size{round(self.target_size * 100)}"
        return "custom" if self.thetas != preset_thetas(self.preset) else self.preset

    @property
    def needs_features(self) -> bool:
        """Whether the recipe works from the windows' log-mels (sensitivity, sequential, refinement)."""
        return self.sequential != "off" or bool(self.refine_steps) or (self.target_size is not None and self.allocation == "sensitivity")

    def context(self, window_seconds: float = 30.0) -> tuple[list[float] | None, float]:
        """(buckets, margin) for a model whose encoder window is `window_seconds`: "auto" keeps the default buckets
        shorter than the window (none: the full window); explicit ones must fit it."""
        if self.context_buckets == "auto":
            return [b for b in DEFAULT_CONTEXT_BUCKETS if b < window_seconds] or None, float(self.context_margin)
        self.check_context(window_seconds)
        return (None if self.context_buckets is None else [float(b) for b in self.context_buckets]), float(self.context_margin)

    def check_context(self, window_seconds: float):
        from ..lite_whisper.configuration_lite_whisper import check_context

        buckets = list(DEFAULT_CONTEXT_BUCKETS) if self.context_buckets == "auto" else self.context_buckets
        check_context(None if buckets is None else list(buckets), self.context_margin,
                      window_seconds if self.context_buckets != "auto" else 30.0, where="context_buckets")

    # ---- serialisation -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = list(self.stages)
        if isinstance(self.context_buckets, tuple):
            d["context_buckets"] = list(self.context_buckets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown compression option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


__all__ = ["ALLOCATIONS", "DEFAULT_CONTEXT_BUCKETS", "DEFAULT_TARGET_SIZE", "PRESETS", "REFINE_TRAIN", "SEQUENTIAL_MODES",
           "CompressionConfig"]
