"""Figures for the evaluation report: quality vs size vs speed (logged to MLflow)."""

from __future__ import annotations

from typing import Any


def quality_size_speed(entries: list[dict[str, Any]]):
    """Scatter of held-out perplexity vs size on disk; marker area ∝ forward tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(e["tokens_per_s"] for e in entries)
    for e in entries:
        size_mb = e["size_bytes"] / 1e6
        ax.scatter(size_mb, e["perplexity"], s=40 + 400 * e["tokens_per_s"] / top, alpha=0.6)
        ax.annotate(
            f"{e['model']}\n{e['tokens_per_s']:.0f} tok/s",
            (size_mb, e["perplexity"]),
            fontsize=8,
            xytext=(5, 5),
            textcoords="offset points",
        )
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.set_title("quality vs size (marker area ∝ forward tokens/s)")
    fig.tight_layout()
    return fig
