"""Request counters and latency summaries for ``GET /v1/stats`` (per Router replica).

Plain Python (no Ray) so it is unit-tested directly; the Router also mirrors every event into
``ray.serve.metrics`` Counters / Histograms (see :class:`ServeMetrics`) for Prometheus::

    curl -s http://127.0.0.1:8000/v1/stats
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

LATENCY_WINDOW = 2048
LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank-with-interpolation percentile (``q`` in [0, 100]); None when empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float | int | None]:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": sum(values) / len(values) if values else None,
    }


@dataclass
class RequestRecord:
    """One finished request, as the Router accounts for it (``Router._account``)."""

    route: str  # cascade | student | teacher | "-" (refused before routing)
    status: int  # HTTP status; 499 = the client went away before the end
    stream: bool = False
    answered_by: str | None = None
    confidence: float | None = None
    fallback: bool = False
    reason: str | None = None
    latency_ms: float = 0.0  # arrival -> last byte
    ttft_ms: float | None = None  # arrival -> first token sent
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_ms: dict[str, float] = field(default_factory=dict)
    segments: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    draft_tokens: int = 0  # speculative decoding: drafted and verified
    accepted_tokens: int = 0  # and kept
    started: float = field(default_factory=time.time)  # unix time of arrival
    info: dict[str, Any] | None = field(default=None, repr=False)  # the answer's distill info
    payload: dict[str, Any] | None = field(default=None, repr=False)  # for the request log


class Stats:
    """Counts by route / answering model / status, fallbacks, and latency windows."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: Counter[str] = Counter()  # by route: cascade | student | teacher
        self.answered_by: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()  # confident | low_confidence | student_error ...
        self.status: Counter[str] = Counter()  # "200", "400", "422", "500"
        self.cascade_requests = 0
        self.fallbacks = 0
        self.speculative = Counter()  # requests, draft_tokens, accepted_tokens
        self.latency: dict[str, deque[float]] = {}

    def _lat(self, key: str, ms: float) -> None:
        self.latency.setdefault(key, deque(maxlen=LATENCY_WINDOW)).append(ms)

    def record(self, rec: RequestRecord) -> None:
        self.status[str(rec.status)] += 1
        if rec.status != 200 or rec.answered_by is None:
            return
        self.requests[rec.route] += 1
        self.answered_by[rec.answered_by] += 1
        self.reasons[rec.reason or "?"] += 1
        if rec.route == "cascade":
            self.cascade_requests += 1
            self.fallbacks += int(rec.fallback)
        if rec.reason == "speculative":
            self.speculative.update(
                requests=1, draft_tokens=rec.draft_tokens, accepted_tokens=rec.accepted_tokens
            )
        for model, ms in rec.model_ms.items():
            self._lat(model, ms)
        self._lat(f"request.{rec.route}", rec.latency_ms)
        if rec.ttft_ms is not None:
            self._lat(f"ttft.{rec.route}", rec.ttft_ms)

    def summary(self, cascade: dict[str, Any] | None = None) -> dict[str, Any]:
        rate = self.fallbacks / self.cascade_requests if self.cascade_requests else None
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": sum(self.requests.values()),
            "by_route": dict(self.requests),
            "answered_by": dict(self.answered_by),
            "reasons": dict(self.reasons),
            "status": dict(self.status),
            "cascade_requests": self.cascade_requests,
            "fallbacks": self.fallbacks,
            "fallback_rate": rate,
            "speculative": self._speculative(),
            "latency_ms": {k: summarize(list(v)) for k, v in sorted(self.latency.items())},
            "cascade": cascade,
        }

    def _speculative(self) -> dict[str, Any] | None:
        """Drafts verified and kept over the speculative requests (None before the first)."""
        s = self.speculative
        if not s["requests"]:
            return None
        d, a = s["draft_tokens"], s["accepted_tokens"]
        return {
            "requests": s["requests"],
            "draft_tokens": d,
            "accepted_tokens": a,
            "acceptance_rate": a / d if d else None,
        }


class ServeMetrics:
    """``ray.serve.metrics`` mirrors of :class:`Stats` (created inside a replica)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "distill_requests", "requests answered", tag_keys=("route", "model")
        )
        self.fallbacks = metrics.Counter("distill_fallbacks", "cascade requests the teacher took")
        self.errors = metrics.Counter("distill_errors", "failed requests", tag_keys=("status",))
        self.latency = metrics.Histogram(
            "distill_model_latency_ms",
            "generation latency per model",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("model",),
        )

    def record(self, rec: RequestRecord) -> None:
        if rec.status != 200 or rec.answered_by is None:
            self.errors.inc(tags={"status": str(rec.status)})
            return
        self.requests.inc(tags={"route": rec.route, "model": rec.answered_by})
        if rec.fallback:
            self.fallbacks.inc()
        for model, ms in rec.model_ms.items():
            self.latency.observe(ms, tags={"model": model})
