"""The sweep's two figures (matplotlib, Agg backend: no display needed).

pareto: WER vs encoder parameters, one curve per compression method plus dense models as reference
points (LiteASR Fig. 1). rank_heatmap: k / full rank of each encoder linear per layer (LiteASR Fig. 6).
"""

from __future__ import annotations

import textwrap
from typing import Sequence

from ..lite_whisper.configuration_lite_whisper import LOW_RANK_SHAPES

LINEARS = tuple(LOW_RANK_SHAPES)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto(rows: Sequence[dict], references: Sequence[dict], path: str, title: str = ""):
    """rows: {"method", "label", "params", "wer"}; references: {"label", "params", "wer"} (dense models)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 4.4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["params"])
        ax.plot([r["params"] / 1e6 for r in pts], [100 * r["wer"] for r in pts], "o-", label=method)
        for r in pts:
            ax.annotate(r["label"], (r["params"] / 1e6, 100 * r["wer"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for r in references:
        ax.plot(r["params"] / 1e6, 100 * r["wer"], "k*", markersize=11)
        ax.annotate(r["label"], (r["params"] / 1e6, 100 * r["wer"]), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.set_xlabel("encoder parameters (M)")
    ax.set_ylabel("WER (%)")
    wers = [r["wer"] for r in list(rows) + list(references)]
    if wers and min(wers) > 0 and max(wers) > 5 * min(wers):  # collapsed points (loops: WER > 100 %) would flatten the rest
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("WER (%, log scale)")
    ax.set_title(title or "WER vs encoder size (★ dense models)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: curves fill the plot
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def rank_ratios(config, lrc) -> list[list[float]]:
    """[layer][linear] k / min(d_in, d_out) for a Whisper config and a low_rank_config; 1.0 where dense."""
    from ..lite_whisper.configuration_lite_whisper import LOW_RANK_SHAPES

    return [[layer[n] / min(LOW_RANK_SHAPES[n](config)) if n in layer else 1.0 for n in LINEARS] for layer in lrc]


def rank_heatmap(panels: Sequence[tuple[str, list]], config, path: str, columns: int = 6):
    """One heatmap (layers x linears, colour = k/D) per (title, low_rank_config) of the model `config`, in
    rows of `columns` panels."""
    plt = _pyplot()
    n = len(panels)
    cols, rows = min(n, columns), -(-n // columns)
    height = 0.25 * config.encoder_layers + 2.2
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 1.2, height * rows), squeeze=False, gridspec_kw={"hspace": 0.75})
    for ax, (title, lrc) in zip(axes.flat, panels):
        im = ax.imshow(rank_ratios(config, lrc), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(LINEARS)), [s.replace("_proj", "") for s in LINEARS], rotation=90, fontsize=7)
        ax.set_yticks(range(config.encoder_layers), [str(i) for i in range(config.encoder_layers)], fontsize=7)
        ax.set_title("\n".join(textwrap.fill(line, 30) for line in title.split("\n")), fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel("encoder layer")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="k / D (1 = dense)", shrink=0.8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
