"""The release gate: a verdict per candidate from the evaluation report, and who is champion.

Pure functions over ``report.json``'s structure (no MLflow, no torch), so every rule is tested
on plain dicts; ``distill.eval.release`` applies the verdicts to the registry::

    verdicts = judge(report, GateConfig())
    verdicts["student"].passed, verdicts["student"].reasons, verdicts["student"].dominated_by
    choice = choose_champion(report, verdicts, GateConfig())
    choice.model, choice.why

A verdict has three parts: the rules (``passed``), the budget (``in_budget``) and dominance
(``dominated_by``: another candidate at least as good on every axis and better on one). The
champion is the best candidate by ``rank_by`` among those that pass, fit the budget and are not
dominated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from distill.eval.config import Bound, GateConfig, lower_is_better

QUANTIZED = ("int4", "int4_cpu")
FP_CHAIN = ("student", "pruned", "initial_student")
# a quantized model whose fp reference is not the student chain
FP_OF = {"teacher_int4": "teacher", "teacher_int4_gptq_cpu": "teacher"}


@dataclass
class Check:
    rule: str  # "vs_teacher" | "vs_fp_student" | "absolute" | "budget"
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
    budget: list[Check] = field(default_factory=list)
    dominated_by: str | None = None

    @property
    def in_budget(self) -> bool:
        return all(c.passed for c in self.budget)

    @property
    def eligible(self) -> bool:
        """May be champion: passes its rules, fits the budget, is not dominated."""
        return self.passed and self.in_budget and self.dominated_by is None

    @property
    def outside_budget(self) -> list[str]:
        return [c.describe() for c in self.budget if not c.passed]

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
            "in_budget": self.in_budget,
            "outside_budget": self.outside_budget,
            "dominated_by": self.dominated_by,
            "eligible": self.eligible,
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
    """The fp model a quantized one was made from: the student, else the pruned model, ...
    (the teacher for ``teacher_int4`` and ``teacher_int4_gptq_cpu``)."""
    if model in FP_OF:
        return FP_OF[model] if FP_OF[model] in entries else None
    if model not in QUANTIZED:
        return None
    return next((k for k in FP_CHAIN if k in entries), None)


def budget_checks(
    entry: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]], cfg: GateConfig
) -> list[Check]:
    """The budget's bounds on one candidate (``vs``: scaled by that model's value)."""
    out: list[Check] = []
    for metric, bound in cfg.budget.items():
        ref = entries.get(bound.vs, {}) if bound.vs else None
        out += _check("budget", metric, bound, entry, bound.vs, ref)
    # a budget metric nobody measured is not met: the budget is not skipped like a rule
    for c in out:
        c.passed = c.passed and not c.skipped
    return out


def _better_or_equal(a: float, b: float, metric: str) -> bool:
    return a <= b if lower_is_better(metric) else a >= b


def dominator(
    model: str, entries: Mapping[str, Mapping[str, Any]], candidates: list[str], axes: list[str]
) -> str | None:
    """A candidate at least as good as ``model`` on every axis and better on one (None if none,
    or when ``model`` lacks an axis: it cannot be compared)."""
    mine = [metric_value(entries[model], a) for a in axes]
    if not axes or any(v is None for v in mine):
        return None
    for other in candidates:
        if other == model:
            continue
        theirs = [metric_value(entries[other], a) for a in axes]
        if any(v is None for v in theirs):
            continue
        pairs = list(zip(theirs, mine, strict=True))
        if all(_better_or_equal(t, m, a) for (t, m), a in zip(pairs, axes, strict=True)) and any(
            t != m for t, m in pairs
        ):
            return other
    return None


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
    """A verdict for every candidate of ``cfg.models`` present in the report."""
    entries = {m["model"]: m for m in report["models"]}
    present = [m for m in cfg.models if m in entries]
    verdicts = {m: judge_model(m, entries, cfg) for m in present}
    for m, v in verdicts.items():
        v.budget = budget_checks(entries[m], entries, cfg)
        v.dominated_by = dominator(m, entries, present, cfg.dominance)
    return verdicts


@dataclass
class Choice:
    """The champion (None when no candidate is eligible) and, for the console, why."""

    model: str | None
    why: str


def _shortfall(v: Verdict) -> float:
    """How far outside the budget a candidate is: its worst bound, as a fraction of the limit."""
    misses = [c for c in v.budget if not c.passed]
    if any(c.value is None or not c.limit for c in misses):
        return float("inf")
    return max((abs(c.value - c.limit) / abs(c.limit) for c in misses), default=0.0)  # type: ignore[operator]


def choose_champion(
    report: Mapping[str, Any], verdicts: Mapping[str, Verdict], cfg: GateConfig
) -> Choice:
    """The best eligible candidate by ``cfg.rank_by``; when none is eligible, why not (naming
    the candidate closest to the budget and its numbers when the budget is what nobody meets)."""
    entries = {m["model"]: m for m in report["models"]}
    rank = cfg.rank_by

    def key(m: str) -> float:
        v = metric_value(entries[m], rank)
        if v is None:
            return float("inf")
        return v if lower_is_better(rank) else -v

    eligible = sorted((m for m, v in verdicts.items() if v.eligible), key=key)
    if eligible:
        best = eligible[0]
        value = metric_value(entries[best], rank)
        shown = "not measured" if value is None else f"{value:.4g}"
        return Choice(best, f"best {rank} ({shown}) among eligible {', '.join(eligible)}")
    if not verdicts:
        return Choice(None, "no candidate in the report")
    in_budget = [m for m, v in verdicts.items() if v.in_budget]
    if not in_budget:
        closest = min(verdicts, key=lambda m: _shortfall(verdicts[m]))
        e = entries[closest]
        numbers = ", ".join(
            f"{k} {metric_value(e, k):.4g}"
            for k in dict.fromkeys([*cfg.budget, rank])
            if metric_value(e, k) is not None
        )
        return Choice(
            None,
            f"no candidate meets the budget; closest: {closest} ({numbers}): "
            + "; ".join(verdicts[closest].outside_budget),
        )
    why = []
    for m in in_budget:
        v = verdicts[m]
        parts = ([] if v.passed else ["fails its rules"]) + (
            [f"dominated by {v.dominated_by}"] if v.dominated_by else []
        )
        why.append(f"{m} {' and '.join(parts)}")
    return Choice(None, "inside the budget: " + "; ".join(why))
