"""The sweep's two figures (matplotlib, Agg backend: no display needed).

pareto: WER vs encoder parameters, one curve per compression method plus dense models as reference
points (LiteASR Fig. 1). rank_heatmap: k / full rank of each encoder linear per layer (LiteASR Fig. 6).
"""

from __future__ import annotations

from typing import Sequence

LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto(rows: Sequence[dict], references: Sequence[dict], path: str, title: str = ""):
    """rows: {"method", "label", "params", "wer"}; references: {"label", "params", "wer"} (dense models)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
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
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel("WER (%, log scale)")
    ax.set_title(title or "WER vs encoder size (★ dense models)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def rank_ratios(config, lrc) -> list[list[float]]:
    """[layer][linear] k / min(d_in, d_out) for a Whisper config and a low_rank_config; 1.0 where dense."""
    from ..lite_whisper.configuration_lite_whisper import LOW_RANK_SHAPES

    return [[layer[n] / min(LOW_RANK_SHAPES[n](config)) if n in layer else 1.0 for n in LINEARS] for layer in lrc]


def rank_heatmap(panels: Sequence[tuple[str, list]], config, path: str):
    """One heatmap (layers x linears, colour = k/D) per (title, low_rank_config) of the model `config`, side by side."""
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n + 1.2, 0.25 * config.encoder_layers + 2.2), squeeze=False)
    for ax, (title, lrc) in zip(axes[0], panels):
        im = ax.imshow(rank_ratios(config, lrc), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(LINEARS)), [s.replace("_proj", "") for s in LINEARS], rotation=90, fontsize=7)
        ax.set_yticks(range(config.encoder_layers), [str(i) for i in range(config.encoder_layers)], fontsize=7)
        ax.set_title(title, fontsize=8)
    axes[0][0].set_ylabel("encoder layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="k / D (1 = dense)", shrink=0.8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
