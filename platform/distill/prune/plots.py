"""The importance figure logged by the prune stage and saved by ``benchmarks/prune.py``."""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.prune.importance import Importance


def importance_figure(scores: Importance, kept_layers: list[int] | None = None) -> Any:
    """2×2: block importance (kept vs dropped), head importance per block, sorted MLP channel
    importance per block, sorted hidden channel importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    n = len(scores.block)
    kept = set(range(n) if kept_layers is None else kept_layers)
    colors = ["tab:blue" if i in kept else "tab:red" for i in range(n)]
    ax.bar(range(n), scores.block, color=colors)
    label = "1 - cos(in, out)" if scores.block_metric == "cosine" else "ppl increase if skipped"
    ax.set_title(f"block importance ({label}); red = dropped")
    ax.set_xlabel("block")
    if scores.block_metric == "ppl" and np.all(scores.block > 0):
        ax.set_yscale("log")
    ax = axes[0, 1]
    im = ax.imshow(scores.heads.T, aspect="auto", cmap="viridis")
    ax.set_title("attention head importance (mean ‖head output‖)")
    ax.set_xlabel("block")
    ax.set_ylabel("q head")
    fig.colorbar(im, ax=ax)
    ax = axes[1, 0]
    for i, row in enumerate(scores.mlp):
        ax.plot(np.sort(row)[::-1], lw=0.8, color=plt.cm.viridis(i / max(n - 1, 1)))
    ax.set_yscale("log")
    ax.set_title("MLP channel importance, sorted (one line per block)")
    ax.set_xlabel("channel rank")
    ax = axes[1, 1]
    ax.plot(np.sort(scores.hidden)[::-1])
    ax.set_yscale("log")
    ax.set_title("hidden channel importance (mean |RMSNorm out|), sorted")
    ax.set_xlabel("channel rank")
    fig.tight_layout()
    return fig
