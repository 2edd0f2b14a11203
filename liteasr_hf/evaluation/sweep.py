"""The accuracy/size sweep: calibrate once, compress at every grid point, score each.

A curve is a `Method`: its name and grid points, each a label and the `CompressionConfig` that builds it (the
built-in curves score the full 30 s window, like the dense row: they compare compressions, not contexts). Every
point is compressed by one `Compressor`, so the statistics pass, spectra, sensitivity gains and the dense model's
outputs are computed once for the whole sweep. `theta_method` and `sensitivity_method` build the usual curves; any
list of configs is a curve too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

from ..calibration.config import CompressionConfig
from ..calibration.features import DEFAULT_PADDING_WEIGHT


@dataclass
class Method:
    name: str  # the curve's legend entry
    points: Sequence[tuple[str, CompressionConfig]]  # (label, config)


def _weighting(padding_weight) -> str:
    return "all frames" if padding_weight is None else f"padding weight {padding_weight}"


def theta_method(points: Sequence = ("a", "b", "c"), padding_weight=DEFAULT_PADDING_WEIGHT, name=None) -> Method:
    """Per-linear θ (attention, MLP): each point a preset name or a (θ_attn, θ_mlp) pair."""
    def config(p):
        if isinstance(p, str):
            return CompressionConfig(preset=p, padding_weight=padding_weight, context_buckets=None)
        return CompressionConfig(theta_attn=p[0], theta_mlp=p[1], padding_weight=padding_weight, context_buckets=None)

    pts = [(p if isinstance(p, str) else f"{p[0]}/{p[1]}", config(p)) for p in points]
    return Method(name or f"θ rule ({_weighting(padding_weight)})", pts)


def sensitivity_method(sizes: Sequence[float] = (0.8, 0.65), padding_weight=DEFAULT_PADDING_WEIGHT,
                       refine: dict | None = None, name=None) -> Method:
    """Ranks for a size target by each linear's measured effect on the encoder output; with `refine`
    (CompressionConfig's refine_* fields without the prefix, `steps` at least) the factors are then refined. The
    curve's name lists the refine settings that differ from CompressionConfig's defaults."""
    refine = dict(refine or {})
    options = {f"refine_{k}": v for k, v in refine.items()}
    pts = [(f"{s:.0%}", CompressionConfig(target_size=s, padding_weight=padding_weight, context_buckets=None, **options))
           for s in sizes]
    if name is None:
        name = "sensitivity allocation"
        if refine.get("steps"):
            defaults = CompressionConfig()
            changed = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in refine.items() if k != "steps" and v != getattr(defaults, f"refine_{k}"))
            name += f" + {refine['steps']} refinement steps" + (f" ({changed})" if changed else "")
    return Method(name, pts)


def run_sweep(compressor, methods: Sequence[Method], groups, out_dir: str, *, name="model", references=(),
              figures_dir=None, progress=True, **eval_kw) -> list[dict]:
    """Score the dense model and every method's grid points (compressed by `compressor`, a calibration.Compressor)
    on `groups` (see run.load_groups); write sweep.md / sweep.json to `out_dir` and pareto.png / ranks.png to
    `figures_dir` (default out_dir).

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

    model, processor = compressor.model, compressor.processor
    rows = [scored("dense", name, lambda: row("dense", name, evaluate_model(name, groups, model=model, processor=processor, **kw)))]
    refs = [dict(label=os.path.basename(str(name)), params=rows[0]["params"], wer=rows[0]["wer"])]
    for label, ref in references:
        r = scored("dense", label, lambda: row("dense", label, evaluate_model(ref, groups, **kw)))
        rows.append(r)
        refs.append(dict(label=label, params=r["params"], wer=r["wer"]))
    panels = []
    for m in methods:
        for label, config in m.points:
            def score():
                lite = compressor.compress(config)
                result = evaluate_model(f"{m.name} {label}", groups, model=lite, processor=processor, **kw)
                refined = lite.liteasr_calibration["selection"].get("refine")
                return dict(row(m.name, label, result), low_rank_config=lite.config.low_rank_config, config=config.to_dict(),
                            **({"refine": refined} if refined else {}))

            rows.append(scored(m.name, label, score))
            panels.append((f"{m.name}\n{label}: {rows[-1]['size']:.0%}", rows[-1]["low_rank_config"]))

    figures_dir = figures_dir or out_dir
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(figures_dir, exist_ok=True)
    lite_rows = [r for r in rows if r["method"] != "dense"]
    pareto(lite_rows, refs, os.path.join(figures_dir, "pareto.png"), title=f"{os.path.basename(str(name))}: WER vs encoder size")
    rank_heatmap(panels, model.config, os.path.join(figures_dir, "ranks.png"))
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
