"""``report.json`` + a readable ``report.md`` (+ ``pareto.png``), in the workdir and in MLflow.

The evaluate stage saves the measurements; the release step (``distill.eval.release``) saves
them again with the gate's verdicts::

    save_report(report, workdir, ctx.tracker)      # report.json, report.md, pareto.png
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.atomic import atomic_file
from distill.eval.config import GENERATION_METRICS
from distill.eval.plots import quality_pareto

MAIN_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("engine", "engine", str),
    ("params", "parameters", lambda v: f"{v:,}"),
    ("size MB", "size_bytes", lambda v: f"{v / 1e6:.1f}"),
    ("held-out ppl", "perplexity", lambda v: f"{v:.2f}"),
    ("next-tok acc", "next_token_accuracy", lambda v: f"{v:.3f}"),
    ("agree w/ teacher", "agreement", lambda v: f"{v:.3f}"),
    ("KL to teacher", "kl_to_reference", lambda v: f"{v:.3f}"),
    ("prefill tok/s", "prefill_tps", lambda v: f"{v:.0f}"),
    ("decode tok/s b1", "decode_b1_tps", lambda v: f"{v:.1f}"),
    ("decode tok/s b8", "decode_b8_tps", lambda v: f"{v:.1f}"),
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


def verdict_cell(report: dict[str, Any], model: str) -> str:
    """One word per model for the tables: champion, pass, FAIL, dominated, over budget."""
    gate = report.get("gate") or {}
    v = gate.get("verdicts", {}).get(model)
    if v is None:
        return "—"
    words = ["pass" if v["passed"] else "FAIL"]
    if v.get("outside_budget"):
        words.append("outside budget")
    if v.get("dominated_by"):
        words.append(f"dominated by {v['dominated_by']}")
    if (gate.get("champion") or {}).get("model") == model:
        words.insert(0, "CHAMPION")
    return ", ".join(words)


def main_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the models table (report.md and the console print the same table)."""
    extra = list(report.get("extra_corpora", {}))
    header = ["model", *(t for t, _, _ in MAIN_COLUMNS), *(f"{n} ppl" for n in extra), "gate"]
    rows = []
    for m in report["models"]:
        cells = [m["model"], *(_cell(m.get(k), f) for _, k, f in MAIN_COLUMNS)]
        for n in extra:
            cells.append(_cell(m.get("extra", {}).get(n, {}).get("perplexity"), "{:.2f}"))
        rows.append([*cells, verdict_cell(report, m["model"])])
    return header, rows


def _main(report: dict[str, Any]) -> list[str]:
    lines = _table(*main_table(report))
    errors = [
        f"- `{m['model']}`: no speed figures: {m['speed_error']}"
        for m in report["models"]
        if m.get("speed_error")
    ]
    speed = report.get("speed")
    if speed:
        lines += [
            "",
            f"Speed in the runtime that serves each model ({speed['threads']} threads): prefill "
            f"of {speed['prompt_tokens']}-token prompts, decode of {speed['new_tokens']} greedy "
            f"tokens after them, median of {speed['repeats']} runs.",
        ]
    return lines + ([""] + errors if errors else [])


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
        line = f"- `{name}`: {word}: {why}"
        if v.get("outside_budget"):
            line += "; **outside the budget**: " + "; ".join(v["outside_budget"])
        if v.get("dominated_by"):
            line += f"; **dominated** by `{v['dominated_by']}` (at least as good on every axis)"
        lines.append(line)
    champ = gate.get("champion")
    why = gate.get("why", "")
    if champ:
        where = champ.get("registered") or "not registered"
        lines.append(f"- champion: `{champ['model']}` ({where}, alias `{gate['alias']}`): {why}")
    else:
        lines.append(f"- champion: none ({why}); alias `{gate['alias']}` left where it was")
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
        "![quality vs decode speed and vs size](pareto.png)",
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
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def save_report(report: dict[str, Any], workdir: Path, tracker: Any) -> Path:
    """Write ``report.json``, ``report.md`` and ``pareto.png``; log the three to ``tracker``."""
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    verdicts = (report.get("gate") or {}).get("verdicts", {})
    fig = quality_pareto(report["models"], verdicts)
    with atomic_file(workdir / "pareto.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    tracker.log_figure(fig, "pareto.png")
    plt.close(fig)
    md = render_markdown(report)
    _write(workdir / "report.md", md)
    out = workdir / "report.json"
    _write(out, json.dumps(report, indent=2))
    tracker.log_dict(report, "report.json")
    tracker.log_artifact(workdir / "report.md")
    return out
