"""Figures for the evaluation report: quality vs size vs speed (logged to MLflow)."""

from __future__ import annotations

from typing import Any


def pareto_front(points: list[tuple[str, float, float]], more_is_better: bool = False) -> list[str]:
    """Names of the points no other point beats on both axes: x (lower is better, or higher with
    ``more_is_better``) and perplexity (lower is better)."""

    def beats(x1: float, x2: float) -> bool:
        return x1 >= x2 if more_is_better else x1 <= x2

    front = []
    for name, x, ppl in points:
        dominated = any(
            beats(ox, x) and op <= ppl and (ox != x or op < ppl)
            for n, ox, op in points
            if n != name
        )
        if not dominated:
            front.append(name)
    return front


def _panel(ax, pts: list[tuple[str, float, float]], more_is_better: bool, verdicts) -> None:
    """One axis of the Pareto figure: the 2-D front as a step line, each model a labelled point
    (green: passed the gate, red: failed, blue: not judged; x: dominated on the gate's axes)."""
    front = set(pareto_front(pts, more_is_better))
    line = sorted((x, p) for n, x, p in pts if n in front)
    ax.step(
        [x for x, _ in line],
        [p for _, p in line],
        where="pre" if more_is_better else "post",
        color="0.6",
        lw=1,
        zorder=1,
    )
    colors = {True: "tab:green", False: "tab:red"}
    for name, x, ppl in pts:
        v = verdicts.get(name)
        color = colors[v["passed"]] if v else "tab:blue"
        dominated = bool(v and v.get("dominated_by"))
        ax.scatter(x, ppl, s=60, color=color, zorder=2, marker="x" if dominated else "o")
        label = name
        if v:
            label += " (pass)" if v["passed"] else " (FAIL)"
            if dominated:
                label += f"\ndominated by {v['dominated_by']}"
        ax.annotate(label, (x, ppl), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_ylabel("held-out perplexity")


def quality_pareto(entries: list[dict[str, Any]], verdicts: dict[str, dict] | None = None):
    """Held-out perplexity against batch-1 decode speed (in the engine that serves each model)
    and against size on disk, each with its Pareto front; gate verdicts in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verdicts = verdicts or {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    speed = [
        (e["model"], e["decode_b1_tps"], e["perplexity"])
        for e in entries
        if e.get("decode_b1_tps") is not None
    ]
    if speed:
        _panel(left, speed, True, verdicts)
    left.set_xlabel("decode tokens/s at batch 1 (serving engine)")
    left.set_title("quality vs speed (right and low is better)")
    size = [(e["model"], e["size_bytes"] / 1e6, e["perplexity"]) for e in entries]
    _panel(right, size, False, verdicts)
    right.set_xlabel("size on disk (MB)")
    right.set_title("quality vs size (left and low is better)")
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
