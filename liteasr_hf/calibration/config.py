"""`CompressionConfig`: every choice of a LiteASR compression, validated on construction and written into the
checkpoint's calibration.json, so a checkpoint says exactly how it was made and can be remade from it.

    config = CompressionConfig(target_size=0.65, refine_steps=300)
    CompressionConfig.from_dict(json.load(open("lite/calibration.json"))["config"]) == config

Each field's help lives once, in its metadata: the class docstring lists it, and `liteasr-hf calibrate` builds its
options from it. What each default rests on, with the figures: docs/results.md.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

from .features import DEFAULT_PADDING_WEIGHT
from .ranks import PRESET_ALIASES, PRESETS, check_theta, preset_thetas

DEFAULT_TARGET_SIZE = 0.8
# Buckets chosen so that clips at the top of each bucket do not make the decoder loop (docs/benchmarks.md,
# "Choosing the dynamic context"); "auto" = those shorter than the model's window.
DEFAULT_CONTEXT_BUCKETS = (15.0, 20.0)
# Past the audio + margin, one padding frame in 4 computed (LiteWhisperConfig.encoder_padding_stride): the largest
# stride that left the calibration clips' transcripts unchanged (docs/benchmarks.md).
DEFAULT_PADDING_STRIDE = 4
# Options of earlier versions, each with the value that is now the only behaviour: a calibration.json that holds one
# at that value still loads; any other value is an error naming it (their results: docs/results.md).
REMOVED_OPTIONS = {"allocation": "sensitivity", "sequential": "off", "probe_clips": 8, "refine_train": "factors"}


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


def padding_weight_arg(text: str) -> float | None:
    """The command line's --padding-weight: a number, or 'all' (None)."""
    return None if text == "all" else float(text)


def context_buckets_arg(values: list[str]) -> list[float] | None:
    """The command line's --context-buckets: seconds, or 'full' (None)."""
    if [v.lower() for v in values] == ["full"]:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--context-buckets takes seconds or 'full', got {' '.join(values)}") from None


def _option(default, help: str, group: str, **cli):
    """A field with its help and command-line group; `cli`: argparse keywords beyond what the default implies (`type`
    where the default is None or a sequence, `choices`, `nargs`, `metavar`, `parse` for a value argparse cannot type,
    `default_text` where the default reads better in words). Names in backticks are other fields: the command line
    shows them as options."""
    return field(default=default, metadata={"help": help, "group": group, **cli})


@dataclass
class CompressionConfig:
    """How to compress a Whisper encoder. With no argument: ranks for 80 % of the dense encoder allocated by measured
    sensitivity, 50/50 real/padding statistics, no refinement, the default dynamic encoder context.

    The size is given one of two ways: `target_size`, or the paper's θ rule (`preset` / `theta_attn` / `theta_mlp`).
    """

    target_size: float | None = _option(
        None, "encoder parameters as a fraction of dense, in (0, 1]; the ranks are allocated greedily by each linear's "
        "measured effect on the encoder output per parameter (sensitivity, measured on the first calibration windows)",
        "compression", type=float, default_text=f"{DEFAULT_TARGET_SIZE} without `preset` / `theta_attn` / `theta_mlp`")
    preset: str | None = _option(
        None, "the paper's θ rule instead of a size (variance kept per linear; eq. 6 + 8): "
        + ", ".join(f"{k} {v}" for k, v in PRESETS.items()) + " (or a / b / c); with a θ alone, the other comes from "
        "balanced", "compression", choices=[*PRESETS, *PRESET_ALIASES])
    theta_attn: float | None = _option(None, "variance kept by attention linears, in (0, 1) (overrides the preset's)",
                                       "compression", type=float)
    theta_mlp: float | None = _option(None, "variance kept by MLP linears, in (0, 1) (overrides the preset's)",
                                      "compression", type=float)
    padding_weight: float | None = _option(
        DEFAULT_PADDING_WEIGHT, "share of each linear's mean / covariance given to the padding frames, in [0, 1]: the "
        "decoder cross-attends to them, so they are calibrated apart from the audio; 'all' (None) = every frame alike, "
        "as in the paper", "compression", parse=padding_weight_arg, metavar="WEIGHT")
    stages: Sequence[float] = _option(
        (), "compress progressively: first to these sizes (descending, above `target_size`), each stage re-measured on "
        "the calibration windows and refined with `refine_steps`; each stage costs one more statistics pass",
        "compression", type=float, nargs="+", metavar="SIZE")
    refine_steps: int = _option(
        0, "refine the factors (Adam) at most this many steps, on the encoder-output MSE against the dense model with "
        "early stopping on held-back calibration windows; 0 = the PCA factors as they are", "refinement")
    refine_lr: float = _option(1e-4, "Adam learning rate of the refinement", "refinement")
    refine_warmup: int = _option(0, "steps over which the learning rate rises linearly to `refine_lr` (Adam's first "
                                    "steps can throw the factors far off the PCA start)", "refinement")
    refine_kl: float = _option(
        0.0, "weight of the decoder KL against the dense model's greedy transcripts of the calibration windows "
        "(teacher forcing; 0 = encoder MSE only); use a lower `refine_lr` (3e-5) and a `refine_warmup` with it",
        "refinement")
    refine_context: bool = _option(
        False, "refine at the dynamic context: the student runs on its buckets, the loss is the decoder KL against the "
        "dense model on the full window, no encoder MSE (a trimmed full-window output is the wrong target); makes "
        "buckets below 10 s usable; needs `refine_steps`, `refine_kl` and context buckets", "refinement")
    context_buckets: Sequence[float] | str | None = _option(
        "auto", "the encoder runs on the smallest of these contexts (seconds, ascending) that holds the audio plus "
        "`context_margin`, else on the full window; 'full' (None) = always the full window, as Whisper", "context",
        parse=context_buckets_arg, nargs="+", metavar="SECONDS",
        default_text=f"{' '.join(f'{b:g}' for b in DEFAULT_CONTEXT_BUCKETS)}, those shorter than the model's window")
    context_margin: float = _option(1.0, "seconds of the padding after the audio that the encoder keeps", "context")
    padding_stride: int = _option(
        DEFAULT_PADDING_STRIDE, "past the audio plus `context_margin` the encoder runs on one padding frame in N, each "
        "standing for its N neighbours; 1 = every frame", "context", metavar="N")
    seed: int = _option(0, "seeds the refinement's held-back windows and batches (and the command line's --num-clips "
                           "draw)", "compression")

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
        if self.padding_weight is not None:
            _number(self.padding_weight, "padding_weight", low=0.0, high=1.0)
        self.stages = tuple(self.stages)
        if self.stages:
            for s in self.stages:
                _number(s, "stages")
            if self.target_size is None:
                raise ValueError("stages need target_size (stages are sizes, not θ presets)")
            sizes = [*self.stages, self.target_size]
            if any(not a > b for a, b in zip(sizes, sizes[1:])) or not sizes[0] < 1.0:
                raise ValueError(f"stages must descend from below 1 to above target_size {self.target_size}, got {list(self.stages)}")
        for name in ("refine_steps", "refine_warmup", "seed"):
            _number(getattr(self, name), name, low=0, integer=True)
        _number(self.refine_lr, "refine_lr", low=0.0, low_open=True)
        _number(self.refine_kl, "refine_kl", low=0.0)
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
        """The config of a calibration.json. Options removed since (REMOVED_OPTIONS) are accepted at the value that
        is now the only behaviour."""
        d = dict(d)
        for name, only in REMOVED_OPTIONS.items():
            if name in d and d.pop(name) != only:
                raise ValueError(f"compression option {name} was removed in this version (only {name}={only!r} remains; "
                                 "see docs/results.md): this checkpoint cannot be remade with it")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown compression option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


CompressionConfig.__doc__ += "\n    Fields:\n" + "\n".join(
    textwrap.fill(f"{f.name}: {f.metadata['help']}", 116, initial_indent=" " * 8, subsequent_indent=" " * 12,
                  break_on_hyphens=False)
    for f in fields(CompressionConfig)) + "\n"


__all__ = ["DEFAULT_CONTEXT_BUCKETS", "DEFAULT_PADDING_STRIDE", "DEFAULT_TARGET_SIZE", "PRESETS", "REMOVED_OPTIONS",
           "CompressionConfig"]
