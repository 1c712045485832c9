"""Run a pipeline: teacher → corpus → stages, under one MLflow parent run.

    distill run pipelines/configs/smoke.yaml

Each stage's result is cached in ``<workdir>/stages/<stage>.json`` under a key chained from the
teacher's weights hash, the corpus fingerprint, the stage's config and every earlier stage's key,
so rerunning after an interruption continues from the first unfinished stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.console import Console
from distill.pipeline import PipelineConfig
from distill.stages import INDEPENDENT, StageContext, StageResult, stage_function

Say = Callable[[str], None]
# Artifacts registered as model versions (the release gate's candidates that can be served).
REGISTERED = ("student", "int4", "int4_cpu", "teacher_int4")


@dataclass
class PipelineSummary:
    run_id: str
    tracking_uri: str
    workdir: Path
    artifacts: dict[str, Path]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] | None = None


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def stage_keys(cfg: PipelineConfig, base: str) -> dict[str, str]:
    """Each stage's cache key: chained from ``base`` (teacher, corpus, initial student) through
    every earlier stage's settings, so a change reruns that stage and all after it; an
    ``INDEPENDENT`` stage's key comes from ``base`` and its own settings alone."""
    keys: dict[str, str] = {}
    chain = base
    for name in cfg.stages:
        section = getattr(cfg, name).model_dump(mode="json")
        if name in INDEPENDENT:
            keys[name] = _key(base, name, section)
            chain = _key(chain, keys[name])
        else:
            keys[name] = chain = _key(chain, name, section)
    return keys


def _cached(path: Path, key: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("key") != key:
        return None
    outputs = {k: Path(v) for k, v in data["outputs"].items()}
    if not all(p.exists() for p in outputs.values()):
        return None
    return data


def find_cached(
    workdir: Path, reuse_from: list[Path], name: str, key: str
) -> tuple[dict[str, Any], Path] | None:
    """A finished run of stage ``name`` with this key: in ``workdir``, else in the first
    ``reuse_from`` workdir that has one; with the workdir it was found in."""
    for d in (workdir, *reuse_from):
        hit = _cached(Path(d) / "stages" / f"{name}.json", key)
        if hit is not None:
            return hit, Path(d)
    return None


def _save(
    path: Path, key: str, result: StageResult, run_id: str, registered: dict[str, str]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    data = {
        "key": key,
        "run_id": run_id,
        "outputs": {k: str(v) for k, v in result.outputs.items()},
        "metrics": result.metrics,
        "summary": result.summary,
        "registered": registered,
        "finished": time.time(),
    }
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def log_file(workdir: Path) -> Path:
    """``<workdir>/logs/distill.log``: the run's lines, every log record, third-party output."""
    return Path(workdir) / "logs" / "distill.log"


@contextmanager
def run_log(workdir: Path) -> Iterator[None]:
    """``<workdir>/logs/distill.log`` gets every Python log record at INFO (distill's progress
    lines, Ray, Ray Data, MLflow, GPT-QModel, transformers), whatever reaches the console."""
    path = log_file(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # the root logger, and each library logger that stops propagation (else records would
    # reach the file twice)
    named = [logging.getLogger(n) for n in ("ray", "ray.data", "ray.train", "mlflow")]
    loggers = [logging.getLogger(), *[lg for lg in named if not lg.propagate]]
    for lg in loggers:
        lg.addHandler(handler)
    run_logger = logging.getLogger("distill.run")
    level = run_logger.level
    run_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        run_logger.setLevel(level)
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()


def register(
    run: Any, result: StageResult, versions: dict[str, str], name: str, parent: str, say: Say
) -> dict[str, str]:
    """Register the stage's servable outputs as versions of ``name`` (tagged with the pipeline
    run ``parent``); return their versions."""
    from distill.lineage.registry import register_checkpoint

    registered = {}
    for art in REGISTERED:
        if art in result.outputs:
            tags = {"kind": art, "pipeline_run_id": parent}
            if art in ("int4", "int4_cpu") and "student" in versions:
                tags["parent_version"] = versions["student"]
            registered[art] = register_checkpoint(run, result.outputs[art], name, tags)
            say(f"[distill] registered {name} v{registered[art]} ({art})")
    return registered


def run_pipeline(
    cfg: PipelineConfig, console: Console | None = None, verbose: bool = False
) -> PipelineSummary:
    """Run ``cfg.stages`` in order; return run id, artifacts and per-stage metrics.

    ``console``: where the run's lines and progress bars go (``distill run`` passes the quiet
    console of ``distill.console.quiet_output``; default: plain lines on stdout). Quiet unless
    ``verbose``: Ray's worker logs and Ray Data progress stay off the console (in
    ``<workdir>/logs/ray`` → Ray's session logs, and ``<workdir>/logs/distill.log``)."""
    workdir = Path(cfg.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    console = console or Console(sys.stdout, logging.getLogger("distill.run"))
    with run_log(workdir):
        return _run(cfg, workdir, console, verbose)


def _run(cfg: PipelineConfig, workdir: Path, console: Console, verbose: bool) -> PipelineSummary:
    from distill.data.pipeline import prepare_corpus
    from distill.lineage.tracker import Tracker
    from distill.models.compat import check_tokenizer_compat
    from distill.models.loader import license_decision, resolve_source
    from distill.raycluster import ensure_ray, link_session_logs

    say = console.say
    tracker = Tracker(cfg.tracking, workdir)
    tracker.experiment_id()  # fail fast on an unreachable tracking server
    say(f"[distill] pipeline {cfg.name!r}  workdir {workdir}  tracking {tracker.uri}")

    t0 = time.perf_counter()
    teacher = resolve_source(cfg.teacher)
    decision = license_decision(cfg.teacher, teacher)
    say(f"[distill] teacher {teacher.name} ({teacher.path}) license {teacher.license}: allowed")
    initial_student = None
    if cfg.student is not None:
        initial_student = resolve_source(cfg.student)
        check_tokenizer_compat(teacher.path, initial_student.path)

    if "prune" in cfg.stages:  # impossible pruning targets fail before any pipeline work
        from distill.prune.stage import preflight

        preflight(cfg.prune, (initial_student or teacher).path)
    if "evaluate" in cfg.stages:  # a missing / empty extra corpus too
        from distill.eval.extra import check_extra_corpora

        check_extra_corpora(cfg.evaluate.extra_corpora)
    ensure_ray(cfg.ray, verbose=verbose)
    link_session_logs(workdir)
    say("[distill] preparing corpus (Ray Data: read → tokenize → split by document → pack)")
    reuse = [Path(d).resolve() for d in cfg.reuse_from]
    corpus = prepare_corpus(cfg.data, teacher.path, workdir / "data", [d / "data" for d in reuse])
    say(
        f"[distill] corpus: {corpus.train_rows} train / {corpus.heldout_rows} held-out rows "
        f"of {corpus.seq_len} tokens ({time.perf_counter() - t0:.0f}s)"
    )

    artifacts: dict[str, Path] = {"teacher": teacher.path}
    if initial_student is not None:
        artifacts["initial_student"] = initial_student.path
    registered_name = cfg.tracking.registered_model or f"{cfg.name}-student"
    summary_stages: dict[str, dict[str, Any]] = {}
    with tracker.pipeline(cfg.name) as parent:
        summary = PipelineSummary(parent.run_id, tracker.uri, workdir, artifacts, summary_stages)
        parent.log_params(cfg.model_dump(mode="json", exclude={"stages"}))
        parent.set_tags(
            {
                "distill.stages": ",".join(cfg.stages),
                "teacher.name": teacher.name,
                "teacher.weights_sha256": teacher.weights_sha256,
                "teacher.tokenizer_sha256": teacher.tokenizer_sha256,
                "teacher.license": teacher.license,
                "teacher.license_decision": decision.reason,
                "corpus.fingerprint": corpus.fingerprint,
            }
        )
        parent.record_input("teacher", teacher.path, teacher.weights_sha256)
        parent.log_input_dataset("corpus", corpus.train_path.as_uri(), corpus.fingerprint, "train")
        parent.log_input_dataset(
            "corpus-heldout", corpus.heldout_path.as_uri(), corpus.fingerprint, "eval"
        )
        base = _key(
            teacher.weights_sha256,
            corpus.fingerprint,
            initial_student and initial_student.weights_sha256,
        )
        keys = stage_keys(cfg, base)
        versions: dict[str, str] = {}
        for name in cfg.stages:
            section = getattr(cfg, name)
            key = keys[name]
            cache_file = workdir / "stages" / f"{name}.json"
            found = find_cached(workdir, reuse, name, key)
            hit, hit_dir = found if found is not None else (None, workdir)
            st = time.perf_counter()
            with tracker.stage(name) as run:
                run.log_params(section.model_dump(mode="json"))
                if hit is not None:
                    where = "" if hit_dir == workdir else f" in {hit_dir}"
                    say(
                        f"[distill] stage {name}: cached from run {hit['run_id']}{where} "
                        "(inputs unchanged)"
                    )
                    result = StageResult(
                        {k: Path(v) for k, v in hit["outputs"].items()},
                        hit["metrics"],
                        hit["summary"],
                    )
                    run.set_tags({"distill.cached_from_run": hit["run_id"]})
                    run.log_metrics(result.metrics)
                    for k, p in result.outputs.items():
                        run.record_output(k, p)
                    if hit_dir == workdir:
                        versions.update(hit.get("registered", {}))
                    else:  # another run's outputs: registered in this run's registry too
                        registered = register(
                            run, result, versions, registered_name, parent.run_id, say
                        )
                        versions.update(registered)
                        _save(cache_file, key, result, hit["run_id"], registered)
                else:
                    say(f"[distill] stage {name}: running")
                    ctx = StageContext(
                        cfg, workdir, teacher, corpus, run, dict(artifacts), console.progress
                    )
                    result = stage_function(name)(ctx, section)
                    if name in ("distill", "sft"):
                        from distill.eval.plots import log_training_curves

                        log_training_curves(run)
                    registered = register(
                        run, result, versions, registered_name, parent.run_id, say
                    )
                    versions.update(registered)
                    _save(cache_file, key, result, run.run_id, registered)
                artifacts.update(result.outputs)
                if name == "evaluate":  # the release gate: verdicts, report.md, alias
                    from distill.eval.release import release

                    summary.report = release(
                        run, cfg.gate, result.summary, versions, registered_name, workdir, say
                    )
            took = time.perf_counter() - st
            summary_stages[name] = {
                "seconds": took,
                "metrics": result.metrics,
                "run_id": run.run_id,
            }
            say(f"[distill] stage {name}: done in {took:.0f}s")
        parent.log_dict({k: str(v) for k, v in artifacts.items()}, "artifacts.json")
        parent.set_tags({f"registered.{k}": v for k, v in versions.items()})
    if not summary_stages:
        raise DistillError("no stage ran")
    return summary
