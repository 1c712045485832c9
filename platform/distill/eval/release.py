"""After ``evaluate``: the release gate's verdicts go into ``report.json`` / ``report.md``, the
evaluate run (metrics ``gate.<model>.passed`` / ``.in_budget`` / ``.dominated``, tags) and the
model registry (version tags ``gate.verdict``, ``gate.reasons``, ``gate.in_budget``,
``gate.dominated_by``; the alias ``champion`` on the chosen candidate)::

    distill run pipelines/configs/smollm2.yaml   # prints the verdicts; serve models:/NAME@champion

When no candidate is eligible the alias stays where it was: the last champion stays champion.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.eval.config import GateConfig
from distill.eval.gate import Verdict, choose_champion, judge
from distill.eval.report import save_report

Say = Callable[[str], None]


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """What the CLI prints: one line per judged model (the reasons of a failure, the budget it
    misses, what dominates it), then the champion or why there is none."""
    gate = report.get("gate")
    if not gate:
        return []
    lines = []
    for name, v in gate["verdicts"].items():
        line = (
            f"gate: {name} PASS"
            if v["passed"]
            else f"gate: {name} FAIL: " + "; ".join(v["reasons"])
        )
        if v.get("outside_budget"):
            line += " | outside the budget: " + "; ".join(v["outside_budget"])
        if v.get("dominated_by"):
            line += f" | DOMINATED by {v['dominated_by']}"
        lines.append(line)
    champ = gate.get("champion")
    alias = gate["alias"]
    why = gate.get("why", "")
    if champ and champ.get("uri"):
        lines.append(
            f"gate: champion = {champ['model']} → {champ['uri']} ({champ['registered']}): {why}"
        )
    elif champ:
        lines.append(f"gate: champion = {champ['model']} (not a registered model: no alias set)")
    else:
        lines.append(f"gate: no champion ({why}); alias {alias!r} not moved")
    return lines


def _tag_versions(
    client: Any, name: str, versions: dict[str, str], verdicts: dict[str, Verdict]
) -> None:
    for model, v in verdicts.items():
        version = versions.get(model)
        if version is None:
            continue
        client.set_model_version_tag(name, version, "gate.verdict", "pass" if v.passed else "fail")
        client.set_model_version_tag(name, version, "gate.reasons", "; ".join(v.reasons)[:5000])
        client.set_model_version_tag(name, version, "gate.in_budget", str(v.in_budget).lower())
        client.set_model_version_tag(name, version, "gate.dominated_by", v.dominated_by or "")


def release(
    run: Any,
    gate: GateConfig,
    report: dict[str, Any],
    versions: dict[str, str],
    registered_name: str,
    workdir: Path,
    say: Say = print,
) -> dict[str, Any]:
    """Judge the report's models, move the alias, save the report with ``gate``; return it."""
    from mlflow import MlflowClient

    if not gate.enabled:
        return report
    verdicts = judge(report, gate)
    choice = choose_champion(report, verdicts, gate)
    champion = choice.model
    client = MlflowClient(run.tracking_uri, registry_uri=run.tracking_uri)
    _tag_versions(client, registered_name, versions, verdicts)
    champ: dict[str, Any] | None = None
    if champion is not None:
        version = versions.get(champion)
        champ = {"model": champion, "version": version, "registered": None, "uri": None}
        if version is not None:
            client.set_registered_model_alias(registered_name, gate.alias, version)
            champ["registered"] = f"models:/{registered_name}/{version}"
            champ["uri"] = f"models:/{registered_name}@{gate.alias}"
    report = {
        **report,
        "gate": {
            "alias": gate.alias,
            "config": gate.model_dump(mode="json"),
            "verdicts": {m: v.to_dict() for m, v in verdicts.items()},
            "champion": champ,
            "why": choice.why,
        },
    }
    metrics = {f"gate.{m}.passed": float(v.passed) for m, v in verdicts.items()}
    metrics.update({f"gate.{m}.in_budget": float(v.in_budget) for m, v in verdicts.items()})
    metrics.update(
        {f"gate.{m}.dominated": float(bool(v.dominated_by)) for m, v in verdicts.items()}
    )
    run.log_metrics(metrics)
    tags = {f"gate.{m}": "pass" if v.passed else "fail" for m, v in verdicts.items()}
    tags.update(
        {f"gate.{m}.dominated_by": v.dominated_by for m, v in verdicts.items() if v.dominated_by}
    )
    tags["gate.champion"] = champion or "none"
    tags["gate.why"] = choice.why[:5000]
    run.set_tags(tags)
    save_report(report, Path(workdir), run)
    for line in verdict_lines(report):
        say(f"[distill] {line}")
    return report
