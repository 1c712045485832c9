"""Drift of live confidence against the evaluation-time distribution: sliding-window two-sample
Kolmogorov-Smirnov tests (``scipy.stats.ks_2samp``).

A window of ``window`` consecutive scored requests, every ``step`` requests, is compared with the
confidences the evaluate stage recorded for the same model and scoring; a window drifts when the
test's p-value is below ``alpha`` (small, since many overlapping windows are tested)::

    wins = drift_windows(live_conf, reference_conf, window=100, step=25, alpha=1e-3)
    first = next((w for w in wins if w.drift), None)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Window:
    start: int  # index of the first scored request in the window
    end: int  # one past the last
    t_start: float
    t_end: float
    median: float
    ks: float  # the KS statistic D (largest gap between the two CDFs)
    p_value: float
    drift: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def drift_windows(
    conf: np.ndarray,
    reference: np.ndarray,
    ts: np.ndarray | None = None,
    window: int = 100,
    step: int = 25,
    alpha: float = 1e-3,
) -> list[Window]:
    """KS test of every window of ``conf`` (in time order) against ``reference``."""
    from scipy.stats import ks_2samp

    conf = np.asarray(conf, dtype=float)
    ref = np.asarray(reference, dtype=float)
    if len(ref) == 0:
        raise ValueError("the reference distribution is empty")
    ts = np.arange(len(conf), dtype=float) if ts is None else np.asarray(ts, dtype=float)
    out = []
    starts = list(range(0, max(len(conf) - window, 0) + 1, step)) if len(conf) >= window else []
    if starts and starts[-1] + window < len(conf):  # the newest requests get a window too
        starts.append(len(conf) - window)
    for s in starts:
        w = conf[s : s + window]
        res = ks_2samp(w, ref)
        p = float(res.pvalue)
        out.append(
            Window(
                s,
                s + window,
                float(ts[s]),
                float(ts[s + window - 1]),
                float(np.median(w)),
                float(res.statistic),
                p,
                p < alpha,
            )
        )
    return out
