"""``distill monitor``: fallback rate and confidence of live traffic over time, against the
distribution the evaluate stage recorded (``report.json`` → ``generation.confidence``)::

    distill monitor runs/serve-log --reference runs/smollm2/report.json --out runs/monitor
    # prints the summary, writes monitor.json + monitor.png; --fail-on-drift exits 3 on drift
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import atomic_file
from distill.config.base import DistillError
from distill.monitor.drift import Window, drift_windows
from distill.monitor.log import read_request_log


@dataclass
class Reference:
    model: str
    scoring: str
    values: np.ndarray
    source: str


def load_reference(report_path: Path, model: str | None, scoring: str) -> Reference:
    """Evaluation-time confidences of ``model`` (default: the gate's champion, else the student)."""
    report_path = Path(report_path)
    if not report_path.is_file():
        raise DistillError(f"--reference {report_path}: no such report.json")
    try:
        report = json.loads(report_path.read_text())
    except json.JSONDecodeError as e:
        raise DistillError(f"--reference {report_path}: not JSON ({e})") from None
    conf = (report.get("generation") or {}).get("confidence")
    if not conf:
        raise DistillError(
            f"--reference {report_path} has no generation.confidence: run evaluate with "
            "evaluate.generation.enabled: true"
        )
    if model is None:
        champ = (report.get("gate") or {}).get("champion") or {}
        model = champ.get("model") or ("student" if "student" in conf else None)
    if model not in conf:
        raise DistillError(
            f"--model {model!r}: the reference has confidences of {', '.join(conf)} only"
        )
    if scoring not in conf[model]:
        raise DistillError(f"--scoring {scoring!r}: the reference has {', '.join(conf[model])}")
    return Reference(model, scoring, np.asarray(conf[model][scoring], float), str(report_path))


@dataclass
class MonitorResult:
    requests: int
    cascade_requests: int
    answered_by: dict[str, int]
    fallback_rate: float | None
    expected_fallback_rate: float | None
    threshold: float | None
    scoring: str
    live_quantiles: dict[str, float]
    reference_quantiles: dict[str, float]
    reference: dict[str, Any]
    window: int
    step: int
    alpha: float
    windows: list[Window] = field(default_factory=list)
    out: str = ""

    @property
    def first_drift(self) -> Window | None:
        return next((w for w in self.windows if w.drift), None)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "windows"}
        d["windows"] = [w.to_dict() for w in self.windows]
        d["drift"] = self.first_drift is not None
        d["first_drift"] = self.first_drift.to_dict() if self.first_drift else None
        return d


def _quantiles(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {}
    return {f"p{q}": float(np.percentile(x, q)) for q in (10, 50, 90)}


def analyse(
    table: Any, ref: Reference, window: int = 100, step: int = 25, alpha: float = 1e-3
) -> MonitorResult:
    """Fallback rate, confidence quantiles and drift windows of a request-log table."""
    cols = table.to_pydict()
    n = len(cols["ts"])
    scored = [
        i
        for i in range(n)
        if cols["confidence"][i] is not None and cols["scoring"][i] == ref.scoring
    ]
    conf = np.asarray([cols["confidence"][i] for i in scored], float)
    ts = np.asarray([cols["ts"][i] for i in scored], float)
    cascade = [i for i in range(n) if cols["route"][i] == "cascade"]
    fallbacks = sum(bool(cols["fallback"][i]) for i in cascade)
    thresholds = [cols["threshold"][i] for i in cascade if cols["threshold"][i] is not None]
    threshold = thresholds[-1] if thresholds else None
    expected = float((ref.values < threshold).mean()) if threshold is not None else None
    answered: dict[str, int] = {}
    for a in cols["answered_by"]:
        answered[a] = answered.get(a, 0) + 1
    return MonitorResult(
        requests=n,
        cascade_requests=len(cascade),
        answered_by=answered,
        fallback_rate=fallbacks / len(cascade) if cascade else None,
        expected_fallback_rate=expected,
        threshold=threshold,
        scoring=ref.scoring,
        live_quantiles=_quantiles(conf),
        reference_quantiles=_quantiles(ref.values),
        reference={"model": ref.model, "n": int(len(ref.values)), "source": ref.source},
        window=window,
        step=step,
        alpha=alpha,
        windows=drift_windows(conf, ref.values, ts, window, step, alpha),
    )


def format_summary(r: MonitorResult) -> list[str]:
    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.1%}"

    def q(d: dict[str, float]) -> str:
        return "/".join(f"{d[k]:.3f}" for k in ("p10", "p50", "p90")) if d else "—"

    by = ", ".join(f"{k} {v}" for k, v in sorted(r.answered_by.items()))
    lines = [
        f"requests {r.requests} (cascade {r.cascade_requests}); answered by {by}",
        f"fallback rate {pct(r.fallback_rate)} (at evaluation {pct(r.expected_fallback_rate)} "
        f"of answers scored below the threshold {r.threshold})",
        f"confidence ({r.scoring}) p10/p50/p90: live {q(r.live_quantiles)}, evaluation "
        f"{q(r.reference_quantiles)} ({r.reference['model']}, n={r.reference['n']})",
    ]
    drifted = [w for w in r.windows if w.drift]
    head = f"drift (KS, windows of {r.window} scored requests every {r.step}, alpha {r.alpha:g})"
    if not r.windows:
        lines.append(f"{head}: fewer than {r.window} scored requests, nothing tested")
    elif not drifted:
        worst = min(r.windows, key=lambda w: w.p_value)
        lines.append(f"{head}: none in {len(r.windows)} windows (lowest p {worst.p_value:.2g})")
    else:
        f = drifted[0]
        lines.append(
            f"{head}: DRIFT in {len(drifted)} of {len(r.windows)} windows; first at scored "
            f"requests {f.start}-{f.end} (D {f.ks:.2f}, p {f.p_value:.2g}, median {f.median:.3f})"
        )
    return lines


def plot(table: Any, r: MonitorResult, ref: Reference):
    """Confidence per request with the evaluation band, fallback rate and KS D per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = table.to_pydict()
    keep = [
        i
        for i, (c, s) in enumerate(zip(cols["confidence"], cols["scoring"], strict=True))
        if c is not None and s == r.scoring
    ]
    conf = [cols["confidence"][i] for i in keep]
    fb = np.asarray([cols["fallback"][i] for i in keep], float)
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax = axes[0]
    ax.plot(range(len(conf)), conf, ".", ms=3, alpha=0.5, label="live")
    lo, hi = (np.percentile(ref.values, q) for q in (10, 90))
    ax.axhspan(lo, hi, color="tab:green", alpha=0.15, label="evaluation p10-p90")
    ax.axhline(np.median(ref.values), color="tab:green", lw=1, label="evaluation median")
    ax.set_ylabel(f"confidence ({r.scoring})")
    ax.legend(fontsize=7, loc="lower left")
    mids = [(w.start + w.end) / 2 for w in r.windows]
    rate = [fb[w.start : w.end].mean() for w in r.windows]
    axes[1].plot(mids, rate, marker="o", label="live, per window")
    if r.expected_fallback_rate is not None:
        axes[1].axhline(r.expected_fallback_rate, color="tab:green", label="at evaluation")
    axes[1].set_ylabel("fallback rate")
    axes[1].legend(fontsize=7)
    colors = ["tab:red" if w.drift else "tab:blue" for w in r.windows]
    axes[2].scatter(mids, [w.ks for w in r.windows], c=colors, s=15)
    axes[2].set_ylabel("KS D (red = drift)")
    axes[2].set_xlabel("scored request (window centre)")
    fig.suptitle(f"distill monitor: {r.requests} requests vs evaluation ({ref.model})")
    fig.tight_layout()
    return fig


def run_monitor(
    log: Path,
    reference: Path,
    model: str | None = None,
    scoring: str | None = None,
    window: int = 100,
    step: int = 25,
    alpha: float = 1e-3,
    out: Path | None = None,
) -> MonitorResult:
    """Read the log, compare with the reference, write ``monitor.json`` + ``monitor.png``."""
    import matplotlib.pyplot as plt

    table = read_request_log(Path(log))
    if scoring is None:
        used = [s for s in table.column("scoring").to_pylist() if s]
        scoring = max(set(used), key=used.count) if used else "mean_logprob"
    ref = load_reference(Path(reference), model, scoring)
    result = analyse(table, ref, window, step, alpha)
    out = Path(out) if out is not None else (Path(log) if Path(log).is_dir() else Path(log).parent)
    result.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "monitor.json") as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=1))
    fig = plot(table, result, ref)
    with atomic_file(out / "monitor.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return result
