"""The release gate: a verdict per model from the evaluation report, and who is champion.

Pure functions over ``report.json``'s structure (no MLflow, no torch), so every rule is tested
on plain dicts; ``distill.eval.release`` applies the verdicts to the registry::

    verdicts = judge(report, GateConfig())
    verdicts["student"].passed, verdicts["student"].reasons
    champion = pick_champion(verdicts, GateConfig().champion_order)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from distill.eval.config import Bound, GateConfig

QUANTIZED = ("int4",)
FP_CHAIN = ("student", "pruned", "initial_student")


@dataclass
class Check:
    rule: str  # "vs_teacher" | "vs_fp_student" | "absolute"
    metric: str
    value: float | None
    reference: str | None  # model compared with (None for absolute)
    reference_value: float | None
    limit: float | None  # the bound after scaling by the reference value
    bound: str  # "min 0.7" / "max 3.0"
    passed: bool
    skipped: bool = False  # measured for neither the model nor its reference: not applied

    def describe(self) -> str:
        if self.skipped:
            return f"{self.metric} not measured: rule skipped ({self.rule} {self.bound})"
        if self.value is None:
            return f"{self.metric} not measured ({self.rule} {self.bound})"
        if self.reference_value is None and self.reference is not None:
            return f"{self.metric}: {self.reference} has no value to compare with"
        op = "≥" if self.bound.startswith("min") else "≤"
        rel = ""
        if self.reference is not None and self.reference_value is not None:
            rel = f" = {self.bound.split()[1]} × {self.reference} {self.reference_value:.4g}"
        word = "ok" if self.passed else "FAILS"
        return f"{self.metric} {self.value:.4g} {word} {op} {self.limit:.4g}{rel}"


@dataclass
class Verdict:
    model: str
    passed: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Human-readable failures (empty when the model passed)."""
        return [c.describe() for c in self.checks if not c.passed]

    @property
    def skipped(self) -> list[str]:
        """Rules not applied because neither the model nor its reference has the metric."""
        return [c.describe() for c in self.checks if c.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "passed": self.passed,
            "reasons": self.reasons,
            "skipped": self.skipped,
            "checks": [asdict(c) for c in self.checks],
        }


def metric_value(entry: Mapping[str, Any], name: str) -> float | None:
    """``entry["generation"]["syntax_valid"]`` for ``generation.syntax_valid``; None if absent."""
    node: Any = entry
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _check(
    rule: str,
    metric: str,
    bound: Bound,
    entry: Mapping[str, Any],
    ref_name: str | None,
    ref: Mapping[str, Any] | None,
) -> list[Check]:
    value = metric_value(entry, metric)
    ref_value = metric_value(ref, metric) if ref is not None else None
    out = []
    for kind, b in (("min", bound.min), ("max", bound.max)):
        if b is None:
            continue
        limit = b if ref_name is None else (None if ref_value is None else b * ref_value)
        skipped = value is None and (ref_name is None or ref_value is None)
        ok = value is not None and limit is not None
        if ok:
            ok = value >= limit if kind == "min" else value <= limit  # type: ignore[operator]
        check = Check(rule, metric, value, ref_name, ref_value, limit, f"{kind} {b:g}", ok, skipped)
        check.passed = ok or skipped
        out.append(check)
    return out


def fp_reference(model: str, entries: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The fp model a quantized one was made from: the student, else the pruned model, ..."""
    if model not in QUANTIZED:
        return None
    return next((k for k in FP_CHAIN if k in entries), None)


def judge_model(model: str, entries: Mapping[str, Mapping[str, Any]], cfg: GateConfig) -> Verdict:
    entry = entries[model]
    checks: list[Check] = []
    teacher = entries.get("teacher")
    for metric, bound in cfg.vs_teacher.items():
        checks += _check("vs_teacher", metric, bound, entry, "teacher", teacher or {})
    fp = fp_reference(model, entries)
    if fp is not None:
        for metric, bound in cfg.vs_fp_student.items():
            checks += _check("vs_fp_student", metric, bound, entry, fp, entries[fp])
    for metric, bound in cfg.absolute.items():
        checks += _check("absolute", metric, bound, entry, None, None)
    return Verdict(model, all(c.passed for c in checks), checks)


def judge(report: Mapping[str, Any], cfg: GateConfig) -> dict[str, Verdict]:
    """A verdict for every model of ``cfg.models`` present in the report."""
    entries = {m["model"]: m for m in report["models"]}
    return {m: judge_model(m, entries, cfg) for m in cfg.models if m in entries}


def pick_champion(verdicts: Mapping[str, Verdict], order: list[str]) -> str | None:
    """The first passing model in ``order`` (None when none passes)."""
    return next((m for m in order if m in verdicts and verdicts[m].passed), None)
