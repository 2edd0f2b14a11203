"""The accuracy/size sweep: calibrate once, build a lite model per (method, grid point), score each.

A compression method is a `Method`: a curve name, its grid points and a `build(ctx, point)` returning a
lite model. `theta_method` (LiteASR θ pairs / presets) and `target_size_method` (greedy allocation under a
size budget) and `sensitivity_method` (allocation by measured effect on the output, optionally refined) are
built in; other calibration variants plug in as further `Method`s, each its own curve.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..calibration.stats import DEFAULT_PADDING_WEIGHT

PointLabel = str


@dataclass
class SweepContext:
    """What every method builds from: the dense model, its processor, calibration clips and statistics
    (collected once), and the PCA of those statistics per padding weight (computed once each)."""

    model: Any
    processor: Any
    clips: list
    stats: Any
    _pcas: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)  # what methods compute once per sweep and share (log-mels, gains)

    def pcas(self, padding_weight=DEFAULT_PADDING_WEIGHT) -> dict:
        from ..calibration.compress import spectra

        if padding_weight not in self._pcas:
            self._pcas[padding_weight] = spectra(self.stats, padding_weight)
        return self._pcas[padding_weight]


@dataclass
class Method:
    name: str  # the curve's legend entry
    points: Sequence[tuple[PointLabel, Any]]  # (label, parameter passed to build)
    build: Callable[[SweepContext, Any], Any]  # -> lite model


def _lite_from_ranks(ctx: SweepContext, ranks: dict, pcas: dict):
    from ..calibration.compress import build_lite_model, factorize

    return build_lite_model(ctx.model, ranks, factorize(ctx.model.get_encoder(), pcas, ranks)).eval()


def theta_method(points: Sequence = ("a", "b", "c"), padding_weight=DEFAULT_PADDING_WEIGHT, name=None) -> Method:
    """Per-linear θ (attention, MLP): each point a preset name or a (θ_attn, θ_mlp) pair."""
    from ..calibration.compress import linear_dims
    from ..calibration.ranks import preset_thetas, theta_ranks

    def build(ctx, thetas):
        pcas = ctx.pcas(padding_weight)
        evals = {n: p[1] for n, p in pcas.items()}
        return _lite_from_ranks(ctx, theta_ranks(evals, linear_dims(ctx.model.get_encoder()), *thetas), pcas)

    pts = [(p if isinstance(p, str) else f"{p[0]}/{p[1]}", preset_thetas(p) if isinstance(p, str) else tuple(p)) for p in points]
    weighting = "all frames" if padding_weight is None else f"padding weight {padding_weight}"
    return Method(name or f"θ rule ({weighting})", pts, build)


def target_size_method(sizes: Sequence[float] = (0.75, 0.6, 0.5), padding_weight=DEFAULT_PADDING_WEIGHT, name=None) -> Method:
    """Greedy rank allocation by variance kept per parameter under an encoder size budget."""
    from ..calibration.compress import linear_budget, linear_dims
    from ..calibration.ranks import target_ranks

    def build(ctx, size):
        pcas = ctx.pcas(padding_weight)
        enc = ctx.model.get_encoder()
        ranks = target_ranks({n: p[1] for n, p in pcas.items()}, linear_dims(enc), linear_budget(enc, size))
        return _lite_from_ranks(ctx, ranks, pcas)

    weighting = "all frames" if padding_weight is None else f"padding weight {padding_weight}"
    return Method(name or f"target size ({weighting})", [(f"{s:.0%}", s) for s in sizes], build)


def sensitivity_method(sizes: Sequence[float] = (0.8, 0.65), padding_weight=DEFAULT_PADDING_WEIGHT, probe_clips: int = 8,
                       refine: dict | None = None, name=None) -> Method:
    """Ranks for a size target by each linear's measured effect on the encoder output (gains
    measured once per sweep on the first `probe_clips` calibration windows), PCA factors as the paper;
    with `refine` (keyword arguments of calibration.refine.refine, `steps` at least), the factors are then
    refined (by default on encoder-output MSE, 20 % of the windows held back for early stopping, seed 0;
    with `kl_weight`, plus the decoder KL on the dense model's greedy transcripts); what it did is kept in
    the point. The curve's name lists the refine arguments that differ from refine's defaults."""
    import inspect

    from ..audio import window_items
    from ..calibration.refine import refine as refine_factors, teacher_outputs, teacher_tokens
    from ..calibration.sensitivity import sensitivity_ranks
    from ..calibration.sequential import features_of

    def build(ctx, size):
        pcas = ctx.pcas(padding_weight)
        cache = ctx.cache.setdefault(("sensitivity", padding_weight, probe_clips), {})
        if not cache:  # log-mels once per sweep; gains (and the dense encoder's outputs) on first use
            cache["feats"], cache["real"] = features_of(ctx.processor.feature_extractor, [w for _, w in window_items(ctx.clips)])
        ranks, cache["gains"] = sensitivity_ranks(ctx.model, cache["feats"], cache["real"], size, pcas, gains=cache.get("gains"),
                                                  probe_clips=probe_clips, pad_weight=padding_weight)
        lite = _lite_from_ranks(ctx, ranks, pcas)
        if refine:
            if "targets" not in cache:
                cache["targets"] = teacher_outputs(ctx.model, cache["feats"])
            if refine.get("kl_weight") and "tokens" not in cache:
                cache["tokens"] = teacher_tokens(ctx.model, cache["feats"])
            done = refine_factors(lite, cache["feats"], cache["real"], cache["targets"], token_targets=cache.get("tokens"),
                                  pad_weight=padding_weight, **refine)
            lite.calibration_info = {"refine": {k: done[k] for k in ("steps", "initial", "best", "history")}}
        return lite.eval()

    if name is None:
        name = "sensitivity allocation"
        if refine:
            defaults = inspect.signature(refine_factors).parameters
            changed = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in refine.items() if k != "steps" and v != defaults[k].default)
            name += f" + {refine['steps']} refinement steps" + (f" ({changed})" if changed else "")
    return Method(name, [(f"{s:.0%}", s) for s in sizes], build)


def calibration_context(model, processor, clips, stats_path=None, batch_size=8, progress=True) -> SweepContext:
    """Collect the dense model's statistics over `clips` once; with `stats_path` they are loaded from there
    when present (windows already counted are skipped) and saved there."""
    from ..audio import window_items
    from ..calibration.stats import CalibrationStats, collect

    stats = CalibrationStats.load(stats_path) if stats_path and os.path.exists(stats_path) else None
    items = window_items(clips)
    stats = collect(model, processor.feature_extractor, items, stats, batch_size=batch_size, device=model.device,
                    dtype=model.dtype, total=len(items), save_path=stats_path, progress=progress)
    return SweepContext(model, processor, clips, stats)


def run_sweep(ctx: SweepContext, methods: Sequence[Method], groups, out_dir: str, *, name="model", references=(),
              figures_dir=None, progress=True, **eval_kw) -> list[dict]:
    """Score the dense model and every method's grid points on `groups` (see run.load_groups); write
    sweep.md / sweep.json to `out_dir` and pareto.png / ranks.png to `figures_dir` (default out_dir).

    references: extra dense models [(label, model name)] drawn as reference points (other sizes).
    Returns the table rows: the dense model first, then one per (method, point).
    """
    from .plots import pareto, rank_heatmap
    from .run import clip_errors, evaluate_model

    def row(method, label, result):
        enc, s = result["encoder"], result["summary"]
        return dict(method=method, label=label, params=enc["params"], dense_params=enc["dense_params"],
                    size=enc["params"] / enc["dense_params"], flops=enc["flops"], dense_flops=enc["dense_flops"],
                    wer=s["wer"], substitutions=s["substitutions"], deletions=s["deletions"], insertions=s["insertions"],
                    words=s["words"], loops=s["loops"], clips=s["clips"], wall_s=s["wall_s"],
                    per_clip=clip_errors(result))  # for Δ's interval

    kw = dict(eval_kw, progress=progress, worst=0)
    # Each scored point is kept in out_dir/points/, so an interrupted sweep resumes and a new method's curve
    # is added without re-scoring the others. Delete the folder after changing data or decoding settings.
    points_dir = os.path.join(out_dir, "points")
    os.makedirs(points_dir, exist_ok=True)

    def scored(method, label, score):
        path = os.path.join(points_dir, "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in f"{method}-{label}") + ".json")
        if not os.path.exists(path):
            result = score()  # before opening the file: an interrupted point leaves nothing behind
            with open(path + ".tmp", "w") as f:
                json.dump(result, f)
            os.replace(path + ".tmp", path)
        with open(path) as f:
            return json.load(f)

    rows = [scored("dense", name, lambda: row("dense", name, evaluate_model(name, groups, model=ctx.model, processor=ctx.processor, **kw)))]
    refs = [dict(label=os.path.basename(str(name)), params=rows[0]["params"], wer=rows[0]["wer"])]
    for label, ref in references:
        r = scored("dense", label, lambda: row("dense", label, evaluate_model(ref, groups, **kw)))
        rows.append(r)
        refs.append(dict(label=label, params=r["params"], wer=r["wer"]))
    panels = []
    for m in methods:
        for label, point in m.points:
            def score():
                lite = m.build(ctx, point)
                result = evaluate_model(f"{m.name} {label}", groups, model=lite, processor=ctx.processor, **kw)
                return dict(row(m.name, label, result), low_rank_config=lite.config.low_rank_config,
                            **getattr(lite, "calibration_info", {}))

            rows.append(scored(m.name, label, score))
            panels.append((f"{m.name}\n{label}: {rows[-1]['size']:.0%}", rows[-1]["low_rank_config"]))

    figures_dir = figures_dir or out_dir
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(figures_dir, exist_ok=True)
    lite_rows = [r for r in rows if r["method"] != "dense"]
    pareto(lite_rows, refs, os.path.join(figures_dir, "pareto.png"), title=f"{os.path.basename(str(name))}: WER vs encoder size")
    rank_heatmap(panels, ctx.model.config, os.path.join(figures_dir, "ranks.png"))
    with open(os.path.join(out_dir, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(out_dir, "sweep.md"), "w") as f:
        f.write(sweep_markdown(rows) + "\n")
    return rows


def sweep_markdown(rows: Sequence[dict]) -> str:
    """The sweep table; Δ is each point's WER minus the first (dense) row's, with its 95 % paired-bootstrap interval
    (points scored before per-clip errors were kept show Δ alone)."""
    from .wer import wer_difference

    lines = ["| method | point | encoder params | size | GFLOPs / 30 s | WER % | Δ points (95 % CI) | S | D | I | loops |",
             "|---" * 11 + "|"]
    for r in rows:
        delta = "" if r is rows[0] else wer_difference(rows[0]["wer"], r["wer"], rows[0].get("per_clip"), r.get("per_clip"))
        lines.append(f"| {r['method']} | {r['label']} | {r['params'] / 1e6:.2f}M | {100 * r['size']:.1f} % | "
                     f"{r['flops'] / 1e9:.1f} | {100 * r['wer']:.2f} | {delta} | "
                     f"{r['substitutions']} | {r['deletions']} | {r['insertions']} | {r['loops']} |")
    return "\n".join(lines)
