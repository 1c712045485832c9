"""Stage ``evaluate``: every model the run produced, the quantized teacher included, side by side
on the held-out split.

Writes ``<workdir>/report.json``, ``report.md`` and ``pareto.png`` (one entry per model:
parameters, size on disk, perplexity, next-token accuracy, agreement and KL to the teacher,
prefill and decode tokens/s in the runtime that serves it, the same quality on each
``evaluate.extra_corpora`` entry, and the generation checks) and logs them to MLflow; the release
gate (``distill.eval.release``, run by the pipeline right after this stage) adds its verdicts::

    distill run pipelines/configs/smoke.yaml     # stages: [..., evaluate]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import atomic_file
from distill.console import Task
from distill.eval.config import MODEL_ORDER, EvaluateConfig
from distill.eval.extra import check_extra_corpora, load_extra_corpora
from distill.eval.extra import describe as describe_corpus
from distill.machine import describe as describe_machine
from distill.stages import StageContext, StageResult


def _contamination(ctx: StageContext, cfg: EvaluateConfig, extra: dict[str, np.ndarray]):
    """The run's contamination check, extra corpora included as eval sets (fails when over)."""
    from distill.eval.contamination import check_contamination, check_run_contamination

    report = check_run_contamination(
        ctx.corpus, ctx.artifacts.get("generations"), ctx.teacher.path, cfg.contamination
    )
    if extra:
        c = cfg.contamination
        more = check_contamination(
            {f"extra.{k}": v for k, v in extra.items()},
            {"corpus.train": ctx.corpus.train(c.max_rows)},
            c.n,
            c.threshold,
            raise_error=c.action == "error",
        )
        report.pairs.extend(more.pairs)
    return report


def _quality(
    models: dict[str, Any],
    rows: np.ndarray,
    extra: dict[str, np.ndarray],
    cfg: EvaluateConfig,
    bar: Task,
) -> dict[str, dict[str, Any]]:
    """Held-out and per-extra-corpus quality of every model against the teacher."""
    from distill.eval.metrics import evaluate_models

    out: dict[str, dict[str, Any]] = {
        k: dict(v) for k, v in evaluate_models(models, rows, cfg.batch_size, "teacher").items()
    }
    bar.advance(phase="quality")
    for name, extra_rows in extra.items():
        scores = evaluate_models(models, extra_rows, cfg.batch_size, "teacher")
        for key, m in scores.items():
            out[key].setdefault("extra", {})[name] = m
        bar.advance(phase=f"quality {name}")
    return out


def _generation(
    ctx: StageContext, cfg: EvaluateConfig, models: dict[str, Any], bar: Task
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Generation checks: per model metrics, and the report's ``generation`` section."""
    from distill.eval.generation import (
        confidence_distribution,
        generate_answers,
        score_answers,
    )
    from distill.eval.prompts import prompt_set
    from distill.models.loader import load_tokenizer

    g = cfg.generation
    tok = load_tokenizer(ctx.teacher.path)
    rows = ctx.corpus.heldout(g.max_rows)
    pset = prompt_set(rows, ctx.corpus.fingerprint, tok, g, ctx.workdir / "eval")
    prompts = pset["prompts"]
    if not prompts:
        return {}, {}
    answers = {}
    for k, m in models.items():
        answers[k] = generate_answers(m, tok, prompts, g.max_new_tokens, g.batch_size)
        bar.advance(phase=f"generation {k}")
    per_model = {
        k: score_answers(prompts, a, None if k == "teacher" else answers["teacher"])
        for k, a in answers.items()
    }
    out = ctx.workdir / "eval" / "answers.jsonl"
    with atomic_file(out) as tmp, open(tmp, "w") as f:
        for k, a in answers.items():
            for p, ans in zip(prompts, a, strict=True):
                f.write(json.dumps({"model": k, "id": p["id"], "kind": p["kind"], **ans.to_dict()}))
                f.write("\n")
    ctx.tracker.log_artifact(out, "eval")
    ctx.tracker.log_artifact(ctx.workdir / "eval" / "prompts.json", "eval")
    ctx.tracker.set_tags({"eval.prompt_set.sha256": pset["sha256"]})
    section = {
        "prompt_set": {k: pset[k] for k in ("version", "sha256", "counts")},
        "max_new_tokens": g.max_new_tokens,
        "confidence": {k: confidence_distribution(a) for k, a in answers.items()},
    }
    return per_model, section


def _entries(
    models: dict[str, Any],
    paths: dict[str, Path],
    quality: dict[str, dict[str, Any]],
    gen_metrics: dict[str, dict[str, Any]],
    prompts: np.ndarray,
    cfg: EvaluateConfig,
    bar: Task,
) -> list[dict[str, Any]]:
    """One report entry per model: how it is served, size, quality, speed, generation."""
    from distill.artifacts import served_as, stored_parameters
    from distill.eval.speed import serving_speeds
    from distill.models.hashing import dir_size_bytes

    speeds: dict[str, dict[str, Any]] = {}
    if cfg.speed.enabled:
        speeds = serving_speeds(
            models, prompts, cfg.speed, lambda figure: bar.advance(phase=f"speed {figure}")
        )
    entries = []
    for key, model in models.items():
        entry: dict[str, Any] = {
            "model": key,
            "path": str(paths[key]),
            **served_as(paths[key], cfg.dtype),
            "parameters": stored_parameters(model),
            "size_bytes": dir_size_bytes(paths[key]),
            **quality[key],
            **speeds.get(key, {}),
        }
        if key in gen_metrics:
            entry["generation"] = gen_metrics[key]
        entries.append(entry)
    return entries


def preflight(cfg: EvaluateConfig, model_dir: Path) -> None:
    """Before any pipeline work: a missing or empty extra corpus fails here."""
    check_extra_corpora(cfg.extra_corpora)


def run(ctx: StageContext, cfg: EvaluateConfig) -> StageResult:
    from distill.artifacts import load_for_eval
    from distill.eval.report import save_report
    from distill.eval.speed import speed_prompts, speed_rounds
    from distill.models.loader import load_tokenizer

    clock = _Clock()
    extra: dict[str, np.ndarray] = {}
    if cfg.extra_corpora:  # read before any model is loaded: bad paths fail here
        tok = load_tokenizer(ctx.teacher.path)
        extra = load_extra_corpora(cfg.extra_corpora, tok, ctx.corpus.seq_len)
    contamination = None
    if cfg.contamination.enabled:  # fails here, before any model is loaded, when contaminated
        contamination = _contamination(ctx, cfg, extra)
    clock.lap("inputs")
    rows = ctx.corpus.heldout(cfg.max_rows)
    wanted = set(cfg.models or MODEL_ORDER) | {"teacher"}
    paths = {k: ctx.artifacts[k] for k in MODEL_ORDER if k in ctx.artifacts and k in wanted}
    models = {k: load_for_eval(p, cfg.dtype) for k, p in paths.items()}
    for k, p in paths.items():
        ctx.tracker.record_input(k, p)
    clock.lap("load")
    steps = 1 + len(extra) + int(cfg.generation.enabled) * len(models)
    steps += speed_rounds(cfg.speed) if cfg.speed.enabled else 0
    with ctx.progress.task("evaluate", steps, "steps") as bar:
        quality = _quality(models, rows, extra, cfg, bar)
        clock.lap("quality")
        gen_metrics, gen_section = ({}, {})
        if cfg.generation.enabled:
            gen_metrics, gen_section = _generation(ctx, cfg, models, bar)
        clock.lap("generation")
        prompts = speed_prompts(rows, cfg.speed)
        entries = _entries(models, paths, quality, gen_metrics, prompts, cfg, bar)
        clock.lap("speed")
    metrics: dict[str, float] = {}
    for entry in entries:
        metrics.update(_flat_metrics(entry["model"], entry))
    report: dict[str, Any] = {
        "pipeline": ctx.config.name,
        "heldout_rows": len(rows),
        "seq_len": int(rows.shape[1]),
        "machine": describe_machine(),
        "speed": {
            "prompt_tokens": int(prompts.shape[1]),
            "new_tokens": cfg.speed.new_tokens,
            "repeats": cfg.speed.repeats,
            "threads": _threads(),
        },
        "models": entries,
        "extra_corpora": {
            ec.name: {"rows": int(len(extra[ec.name])), **describe_corpus(ec)}
            for ec in cfg.extra_corpora
        },
    }
    if gen_section:
        report["generation"] = gen_section
    if contamination is not None:
        report["contamination"] = contamination.to_dict()
        metrics.update(contamination.metrics())
    metrics.update({f"seconds.{k}": v for k, v in clock.laps.items()})
    ctx.tracker.log_metrics(metrics)
    out = save_report(report, ctx.workdir, ctx.tracker)
    ctx.tracker.record_output("report", out)
    return StageResult(outputs={"report": out}, metrics=metrics, summary=report)


class _Clock:
    """Seconds spent per phase of the stage (``seconds.<phase>`` metrics)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._t
        self._t = now


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _flat_metrics(key: str, entry: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``student.perplexity``, ``student.generation.syntax_valid``, ``student.extra.x.perplexity``."""
    out: dict[str, float] = {}
    for name, value in entry.items():
        if isinstance(value, dict):
            out.update(_flat_metrics(key, value, f"{prefix}{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{key}.{prefix}{name}"] = float(value)
    return out
