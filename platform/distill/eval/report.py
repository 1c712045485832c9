"""``report.json`` + a readable ``report.md`` (+ ``pareto.png``), in the workdir and in MLflow.

The evaluate stage saves the measurements; the release step (``distill.eval.release``) saves
them again with the gate's verdicts::

    save_report(report, workdir, ctx.tracker)      # report.json, report.md, pareto.png
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.eval.config import GENERATION_METRICS

MAIN_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("params", "parameters", lambda v: f"{v:,}"),
    ("size MB", "size_bytes", lambda v: f"{v / 1e6:.1f}"),
    ("held-out ppl", "perplexity", lambda v: f"{v:.2f}"),
    ("next-tok acc", "next_token_accuracy", lambda v: f"{v:.3f}"),
    ("agree w/ teacher", "agreement", lambda v: f"{v:.3f}"),
    ("KL to teacher", "kl_to_reference", lambda v: f"{v:.3f}"),
    ("fwd tok/s", "tokens_per_s", lambda v: f"{v:.0f}"),
]
GEN_FORMATS = {
    "syntax_valid": "{:.2f}",
    "chrf_teacher": "{:.1f}",
    "chrf_reference": "{:.1f}",
    "repetition": "{:.3f}",
    "degenerate": "{:.2f}",
    "length_ratio": "{:.2f}",
    "confidence": "{:.3f}",
}


def _cell(v: Any, fmt: Callable[[Any], str] | str) -> str:
    if v is None:
        return "—"
    return fmt(v) if callable(fmt) else fmt.format(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _main(report: dict[str, Any]) -> list[str]:
    rows = [
        [m["model"]] + [_cell(m.get(k), f) for _, k, f in MAIN_COLUMNS] for m in report["models"]
    ]
    return _table(["model"] + [t for t, _, _ in MAIN_COLUMNS], rows)


def _corpora(report: dict[str, Any]) -> list[str]:
    names = ["held-out split", *report.get("extra_corpora", {})]
    header = ["model"] + [f"{n} ppl / acc" for n in names]
    rows = []
    for m in report["models"]:
        cells = [f"{m['perplexity']:.2f} / {m['next_token_accuracy']:.3f}"]
        for n in names[1:]:
            e = m.get("extra", {}).get(n)
            cells.append(f"{e['perplexity']:.2f} / {e['next_token_accuracy']:.3f}" if e else "—")
        rows.append([m["model"], *cells])
    return _table(header, rows)


def _generation(report: dict[str, Any]) -> list[str]:
    gen = report.get("generation")
    if not gen:
        return ["Generation checks were not run (`evaluate.generation.enabled: false`)."]
    ps = gen["prompt_set"]
    lines = [
        f"Prompt set v{ps['version']} (sha256 {ps['sha256'][:12]}): "
        + ", ".join(f"{n} {k}" for k, n in ps["counts"].items())
        + f"; greedy, at most {gen['max_new_tokens']} new tokens. chrF is sacrebleu's (0-100).",
        "",
    ]
    rows = [
        [m["model"]]
        + [_cell(m.get("generation", {}).get(k), GEN_FORMATS[k]) for k in GENERATION_METRICS]
        for m in report["models"]
    ]
    return lines + _table(["model", *GENERATION_METRICS], rows)


def _gate(report: dict[str, Any]) -> list[str]:
    gate = report.get("gate")
    if not gate:
        return ["The release gate did not run (`gate.enabled: false` or no evaluate stage)."]
    lines = []
    for name, v in gate["verdicts"].items():
        word = "**PASS**" if v["passed"] else "**FAIL**"
        why = "; ".join(v["reasons"]) if v["reasons"] else "every rule holds"
        lines.append(f"- `{name}`: {word}: {why}")
    champ = gate.get("champion")
    if champ:
        where = champ.get("registered") or "not registered"
        lines.append(f"- champion: `{champ['model']}` ({where}, alias `{gate['alias']}`)")
    else:
        lines.append(f"- champion: none passed; alias `{gate['alias']}` left where it was")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: main table, per-corpus table, generation checks, gate."""
    parts = [
        f"# distill report: {report['pipeline']}",
        "",
        f"{report['machine']}; held-out {report['heldout_rows']} rows × {report['seq_len']} "
        "tokens.",
        "",
        "## Models",
        "",
        *_main(report),
        "",
        "![quality vs size](pareto.png)",
        "",
        "## Per corpus (perplexity / next-token accuracy)",
        "",
        *_corpora(report),
        "",
        "## Generation (teacher's row first: compare each model with it)",
        "",
        *_generation(report),
        "",
        "## Release gate",
        "",
        *_gate(report),
    ]
    cont = report.get("contamination")
    if cont:
        worst = max((p["rate"] for p in cont["pairs"]), default=0.0)
        parts += [
            "",
            "## Contamination",
            "",
            f"Largest {cont['n']}-gram overlap of an eval set with a train set: {worst:.1%} "
            f"(threshold {cont['threshold']:.1%}).",
        ]
    return "\n".join(parts) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_report(report: dict[str, Any], workdir: Path, tracker: Any) -> Path:
    """Write ``report.json``, ``report.md`` and ``pareto.png``; log the three to ``tracker``."""
    import matplotlib.pyplot as plt

    from distill.eval.plots import quality_pareto

    workdir = Path(workdir)
    verdicts = {k: v["passed"] for k, v in (report.get("gate") or {}).get("verdicts", {}).items()}
    fig = quality_pareto(report["models"], verdicts)
    tmp = workdir / ".pareto.tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, workdir / "pareto.png")
    tracker.log_figure(fig, "pareto.png")
    plt.close(fig)
    md = render_markdown(report)
    _write(workdir / "report.md", md)
    out = workdir / "report.json"
    _write(out, json.dumps(report, indent=2))
    tracker.log_dict(report, "report.json")
    tracker.log_artifact(workdir / "report.md")
    return out
