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


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both size and perplexity (lower is better)."""
    front = []
    for name, size, ppl in points:
        dominated = any(
            s <= size and p <= ppl and (s < size or p < ppl) for n, s, p in points if n != name
        )
        if not dominated:
            front.append(name)
    return front


def quality_pareto(entries: list[dict[str, Any]], verdicts: dict[str, bool] | None = None):
    """Held-out perplexity vs size, the Pareto front drawn, models coloured by gate verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verdicts = verdicts or {}
    pts = [(e["model"], e["size_bytes"] / 1e6, e["perplexity"]) for e in entries]
    front = set(pareto_front(pts))
    fig, ax = plt.subplots(figsize=(6, 4))
    line = sorted((s, p) for n, s, p in pts if n in front)
    ax.step([s for s, _ in line], [p for _, p in line], where="post", color="0.6", lw=1, zorder=1)
    colors = {True: "tab:green", False: "tab:red"}
    for name, size, ppl in pts:
        color = colors.get(verdicts[name], "tab:blue") if name in verdicts else "tab:blue"
        ax.scatter(size, ppl, s=60, color=color, zorder=2, marker="o" if name in front else "x")
        label = name + (
            "" if name not in verdicts else (" (pass)" if verdicts[name] else " (FAIL)")
        )
        ax.annotate(label, (size, ppl), fontsize=8, xytext=(5, 5), textcoords="offset points")
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.set_title("quality vs size: Pareto front (o, line), gate verdicts in colour")
    fig.tight_layout()
    return fig


CURVES = ("train/loss", "train/kd", "train/ce", "eval/loss")


def training_curves(tracking_uri: str, run_id: str):
    """Per-step training metrics of a stage run, read back from MLflow; ``None`` if none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    series = {k: client.get_metric_history(run_id, k) for k in CURVES}
    series = {k: sorted(v, key=lambda m: m.step) for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, hist in series.items():
        ax.plot([m.step for m in hist], [m.value for m in hist], label=name, marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("training curves")
    ax.legend()
    fig.tight_layout()
    return fig


def log_training_curves(run) -> bool:
    """Log ``training_curves.png`` to a ``StageRun`` when it has per-step metrics."""
    import matplotlib.pyplot as plt

    fig = training_curves(run.tracking_uri, run.run_id)
    if fig is None:
        return False
    run.log_figure(fig, "training_curves.png")
    plt.close(fig)
    return True
