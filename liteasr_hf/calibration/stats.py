"""Streaming output statistics of the encoder's linears: count, sum and Gram matrix Y^T Y in float64.

Memory is O(D_out^2) per linear whatever the number of clips, and the PCA taken from these sums equals
the PCA of the stacked activations. Real-audio frames and padding frames are summed apart, so the
real/padding weighting is chosen when the moments are read (`LinearStats.moments`), not when the
statistics are collected: one pass over the clips serves every weighting, preset and target size.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from ..lite_whisper.configuration_lite_whisper import LOW_RANK_SHAPES, projection_path
from .features import DEFAULT_PADDING_WEIGHT, real_frame_count

PARTS = ("real", "pad")


def encoder_linears(encoder: nn.Module) -> dict[str, nn.Module]:
    """The compressible linears (dense, or already low-rank), keyed by their name relative to the encoder
    ("layers.3.fc1"), in layer order and LOW_RANK_SHAPES order within a layer."""
    return {f"layers.{i}.{projection_path(n)}": layer.get_submodule(projection_path(n))
            for i, layer in enumerate(encoder.layers) for n in LOW_RANK_SHAPES}


@dataclass
class LinearStats:
    """Frame count, sum and Gram matrix of one linear's outputs, for real-audio and padding frames apart."""

    dim: int
    count: dict = field(default_factory=dict)  # part -> float64 scalar tensor
    sum: dict = field(default_factory=dict)  # part -> [dim] float64
    gram: dict = field(default_factory=dict)  # part -> [dim, dim] float64

    def __post_init__(self):
        for p in PARTS:
            self.count.setdefault(p, torch.zeros((), dtype=torch.float64))
            self.sum.setdefault(p, torch.zeros(self.dim, dtype=torch.float64))
            self.gram.setdefault(p, torch.zeros(self.dim, self.dim, dtype=torch.float64))

    def to(self, device) -> "LinearStats":
        for d in (self.count, self.sum, self.gram):
            for p in PARTS:
                d[p] = d[p].to(device)
        return self

    def update(self, y: torch.Tensor, part: str = "real"):
        """Add frames y [N, dim]."""
        y = y.reshape(-1, self.dim).to(self.gram[part].device, torch.float64)
        self.count[part] += y.shape[0]
        self.sum[part] += y.sum(0)
        self.gram[part].addmm_(y.T, y)

    def merge_(self, other: "LinearStats") -> "LinearStats":
        for p in PARTS:
            self.count[p] += other.count[p].to(self.count[p].device)
            self.sum[p] += other.sum[p].to(self.sum[p].device)
            self.gram[p] += other.gram[p].to(self.gram[p].device)
        return self

    def moments(self, padding_weight: float | None = DEFAULT_PADDING_WEIGHT) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [dim] and covariance [dim, dim] of the mixture (1 - w) real + w padding.

        `padding_weight=None` weighs every frame alike (the paper: padding is ~90 % of frames);
        0 keeps only real-audio frames. A part with no frames drops out of the mixture.
        """
        n = {p: self.count[p].item() for p in PARTS}
        if padding_weight is None:
            w = {p: n[p] for p in PARTS}
        else:
            if not 0.0 <= padding_weight <= 1.0:
                raise ValueError(f"padding_weight must lie in [0, 1], got {padding_weight}")
            w = {"real": 1.0 - padding_weight, "pad": padding_weight}
        w = {p: (w[p] if n[p] > 0 else 0.0) for p in PARTS}
        total = sum(w.values())
        if total == 0:
            raise ValueError("no frames collected for this linear (or all of them weighted 0)")
        mean = sum(w[p] / total * self.sum[p] / max(n[p], 1) for p in PARTS)
        second = sum(w[p] / total * self.gram[p] / max(n[p], 1) for p in PARTS)
        cov = second - torch.outer(mean, mean)
        return mean, (cov + cov.T) / 2

    def pca(self, padding_weight: float | None = DEFAULT_PADDING_WEIGHT):
        """Mean, eigenvalues (descending, clamped at 0) and eigenvectors (columns) of the covariance."""
        mean, cov = self.moments(padding_weight)
        evals, evecs = torch.linalg.eigh(cov)
        return mean, evals.flip(0).clamp_min(0), evecs.flip(1)


class CalibrationStats:
    """Statistics of every compressible linear of one Whisper encoder, plus the ids of the windows seen."""

    def __init__(self, dims: dict[str, int], seen: Sequence[str] = (), meta: dict | None = None):
        self.linears = {name: LinearStats(d) for name, d in dims.items()}
        self.seen = list(seen)
        self.meta = dict(meta or {})

    @classmethod
    def for_encoder(cls, encoder: nn.Module, **kw) -> "CalibrationStats":
        """Empty statistics of every compressible linear of `encoder` (dense ones only: a low-rank linear is not
        compressed again)."""
        return cls({n: m.out_features for n, m in encoder_linears(encoder).items() if isinstance(m, nn.Linear)}, **kw)

    def __getitem__(self, name) -> LinearStats:
        return self.linears[name]

    def to(self, device) -> "CalibrationStats":
        for s in self.linears.values():
            s.to(device)
        return self

    def frames(self) -> dict[str, int]:
        s = next(iter(self.linears.values()))
        return {p: int(s.count[p].item()) for p in PARTS}

    def merge_(self, other: "CalibrationStats") -> "CalibrationStats":
        if self.linears.keys() != other.linears.keys():
            raise ValueError("cannot merge statistics of different models (their linears differ)")
        overlap = set(self.seen) & set(other.seen)
        if overlap:
            raise ValueError(f"statistics overlap on {len(overlap)} window(s), e.g. {sorted(overlap)[0]!r}; merging would count them twice")
        for name, s in self.linears.items():
            s.merge_(other.linears[name])
        self.seen += other.seen
        return self

    # ---- hooks -----------------------------------------------------------------------------------

    @contextmanager
    def hooks(self, encoder: nn.Module, real_frames: list[int]):
        """Forward hooks that add each linear's outputs. `real_frames` is a list the caller refills with
        the number of real-audio frames of each batch item before every forward."""

        def hook(name):
            def fn(module, inputs, output):
                stats = self.linears[name]
                for y, n in zip(output.detach(), real_frames):
                    stats.update(y[:n], "real")
                    stats.update(y[n:], "pad")

            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in encoder_linears(encoder).items() if n in self.linears]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def add(self, encoder: nn.Module, features: torch.Tensor, real_frames: Sequence[int], ids: Sequence[str] = ()):
        """Run the dense `encoder` on one batch of log-mels [B, n_mels, T] and add its linears' outputs; each item's
        first `real_frames[i]` encoder frames count as audio, the rest as padding."""
        frames = list(real_frames)
        p = next(encoder.parameters())
        with self.hooks(encoder, frames):
            encoder(features.to(p.device, p.dtype))
        self.seen += list(ids)
        return self

    # ---- multi-process ---------------------------------------------------------------------------

    def all_reduce_(self) -> "CalibrationStats":
        """Sum the statistics of all processes (`accelerate launch`: each saw its own shard of the clips).
        A no-op in a single process."""
        from accelerate import PartialState
        from accelerate.utils import gather_object, reduce

        state = PartialState()
        if state.num_processes == 1:
            return self
        for s in self.linears.values():
            for d in (s.count, s.sum, s.gram):
                for p in PARTS:
                    d[p] = reduce(d[p].to(state.device), reduction="sum")
        # every process may hold the same resumed ids: keep each once, in order
        self.seen = list(dict.fromkeys(i for ids in gather_object([self.seen]) for i in ids))
        return self

    # ---- disk ------------------------------------------------------------------------------------

    def save(self, path: str):
        """One .safetensors file: tensors "<linear>.<part>.<count|sum|gram>", the seen window ids in metadata."""
        from safetensors.torch import save_file

        tensors = {}
        for name, s in self.linears.items():
            for p in PARTS:
                tensors[f"{name}.{p}.count"] = s.count[p].reshape(1).cpu()
                tensors[f"{name}.{p}.sum"] = s.sum[p].cpu().contiguous()
                tensors[f"{name}.{p}.gram"] = s.gram[p].cpu().contiguous()
        meta = {"seen": json.dumps(self.seen), "meta": json.dumps(self.meta), "format": "liteasr-stats-v1"}
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata=meta)
        import os

        os.replace(tmp, path)  # an interrupted save never leaves a truncated stats file behind

    @classmethod
    def load(cls, path: str, device="cpu") -> "CalibrationStats":
        from safetensors import safe_open

        with safe_open(path, framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != "liteasr-stats-v1":
                raise ValueError(f"{path}: not a liteasr statistics file")
            keys = list(f.keys())
            names = sorted({k.rsplit(".", 2)[0] for k in keys}, key=_layer_order)
            stats = cls({n: f.get_slice(f"{n}.real.sum").get_shape()[0] for n in names},
                        json.loads(meta["seen"]), json.loads(meta.get("meta", "{}")))
            for n in names:
                s = stats.linears[n]
                for p in PARTS:
                    s.count[p] = f.get_tensor(f"{n}.{p}.count").reshape(())
                    s.sum[p] = f.get_tensor(f"{n}.{p}.sum")
                    s.gram[p] = f.get_tensor(f"{n}.{p}.gram")
        return stats


def _layer_order(name: str):
    parts = name.split(".")
    layer = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    order = list(LOW_RANK_SHAPES)
    return layer, order.index(parts[-1]) if parts[-1] in order else len(order)


@torch.no_grad()
def collect(
    model,
    feature_extractor,
    windows: Iterable[tuple[str, object]],  # (id, 16 kHz mono float array)
    stats: CalibrationStats | None = None,
    *,
    batch_size: int = 8,
    device="cpu",
    dtype=torch.float32,
    total: int | None = None,
    save_every: int = 0,
    save_path: str | None = None,
    progress: bool = True,
) -> CalibrationStats:
    """Run the dense encoder over (id, 16 kHz audio) windows of at most 30 s, adding their statistics.

    Windows whose id is already in `stats.seen` are skipped (resume). With `save_path` the statistics are
    saved at the end and, with `save_every`, every that many windows, so an interrupted run keeps its work.
    """
    from tqdm.auto import tqdm

    encoder = model.get_encoder()
    stats = stats or CalibrationStats.for_encoder(encoder)
    stats.to(device)
    max_frames = encoder.config.max_source_positions
    samples_per_frame = feature_extractor.hop_length * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    done = set(stats.seen)
    bar = tqdm(total=total, desc="calibration clips", unit="clip", disable=not progress)
    batch, since_save = [], 0

    def flush():
        nonlocal since_save
        feats = feature_extractor([a for _, a in batch], sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
        real = [real_frame_count(len(a), samples_per_frame, max_frames) for _, a in batch]
        stats.add(encoder, feats.input_features.to(device, dtype), real, [i for i, _ in batch])
        bar.update(len(batch))
        since_save += len(batch)
        batch.clear()
        if save_every and save_path and since_save >= save_every:
            stats.save(save_path)
            since_save = 0

    for wid, audio in windows:
        if wid in done:
            bar.update(1)
            continue
        batch.append((wid, audio))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    if save_path:
        stats.save(save_path)
    return stats


def spectra(stats: CalibrationStats, padding_weight: float | None = DEFAULT_PADDING_WEIGHT, progress: bool = False):
    """{name: (mean, eigenvalues desc, eigenvectors)} for every linear in the statistics, on the CPU: the one-pass PCA
    every factorization starts from.

    The eigendecompositions run where the statistics are; the results go to the CPU because on a GPU they
    would sit beside the model through sensitivity probes and refinement (large-v3: 8.8 GB of float64
    eigenvectors). Their users move the columns they keep.
    """
    from tqdm.auto import tqdm

    linears = tqdm(stats.linears.items(), desc="eigendecomposition", unit="linear", disable=not progress)
    return {n: tuple(t.cpu() for t in s.pca(padding_weight)) for n, s in linears}
