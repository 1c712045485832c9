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
from typing import TYPE_CHECKING, Any

from distill.config.base import DistillError
from distill.console import Console
from distill.pipeline import PipelineConfig
from distill.stages import (
    INDEPENDENT,
    StageContext,
    StageResult,
    run_preflights,
    stage_function,
)

if TYPE_CHECKING:
    from distill.data.packed import PackedCorpus
    from distill.lineage.tracker import StageRun, Tracker
    from distill.models.license import LicenseDecision
    from distill.models.loader import ModelInfo

Say = Callable[[str], None]
# Artifacts registered as model versions (the release gate's candidates that can be served).
REGISTERED = ("student", "int4", "int4_cpu", "teacher_int4", "teacher_int4_gptq_cpu")


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


@dataclass
class _Models:
    """The teacher, its license decision and the configured initial student, if any."""

    teacher: ModelInfo
    decision: LicenseDecision
    initial_student: ModelInfo | None = None


def _resolve_models(cfg: PipelineConfig, say: Say) -> _Models:
    """Resolve teacher and initial student (local files only), check the teacher's license and
    that both share a tokenizer."""
    from distill.models.compat import check_tokenizer_compat
    from distill.models.loader import license_decision, resolve_source

    teacher = resolve_source(cfg.teacher)
    decision = license_decision(cfg.teacher, teacher)
    say(f"[distill] teacher {teacher.name} ({teacher.path}) license {teacher.license}: allowed")
    initial_student = None
    if cfg.student is not None:
        initial_student = resolve_source(cfg.student)
        check_tokenizer_compat(teacher.path, initial_student.path)
    return _Models(teacher, decision, initial_student)


def _record_parent(
    parent: StageRun, cfg: PipelineConfig, models: _Models, corpus: PackedCorpus
) -> None:
    """The parent run's params, tags and inputs: the config, the teacher, the corpus."""
    teacher = models.teacher
    parent.log_params(cfg.model_dump(mode="json", exclude={"stages"}))
    parent.set_tags(
        {
            "distill.stages": ",".join(cfg.stages),
            "teacher.name": teacher.name,
            "teacher.weights_sha256": teacher.weights_sha256,
            "teacher.tokenizer_sha256": teacher.tokenizer_sha256,
            "teacher.license": teacher.license,
            "teacher.license_decision": models.decision.reason,
            "corpus.fingerprint": corpus.fingerprint,
        }
    )
    parent.record_input("teacher", teacher.path, teacher.weights_sha256)
    parent.log_input_dataset("corpus", corpus.train_path.as_uri(), corpus.fingerprint, "train")
    parent.log_input_dataset(
        "corpus-heldout", corpus.heldout_path.as_uri(), corpus.fingerprint, "eval"
    )


@dataclass
class _Pipeline:
    """What every stage of one run shares: the config, its inputs, the parent run, the
    artifacts so far and the model versions registered so far."""

    cfg: PipelineConfig
    workdir: Path
    reuse: list[Path]
    teacher: ModelInfo
    corpus: PackedCorpus
    console: Console
    parent: StageRun  # the pipeline's run
    artifacts: dict[str, Path]
    versions: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] | None = None  # the release gate's, once evaluate ran

    @property
    def registered_name(self) -> str:
        return self.cfg.tracking.registered_model or f"{self.cfg.name}-student"

    def cache_file(self, name: str) -> Path:
        """``<workdir>/stages/<name>.json``: the stage's record (``find_cached`` reads it)."""
        return self.workdir / "stages" / f"{name}.json"

    def register(self, run: StageRun, result: StageResult) -> dict[str, str]:
        registered = register(
            run, result, self.versions, self.registered_name, self.parent.run_id, self.console.say
        )
        self.versions.update(registered)
        return registered

    def replay(
        self, run: StageRun, name: str, key: str, hit: dict[str, Any], hit_dir: Path
    ) -> StageResult:
        """A cached stage: its recorded outputs and metrics, logged to this run's stage run
        (and registered here when they came from another workdir)."""
        where = "" if hit_dir == self.workdir else f" in {hit_dir}"
        self.console.say(
            f"[distill] stage {name}: cached from run {hit['run_id']}{where} (inputs unchanged)"
        )
        result = StageResult(
            {k: Path(v) for k, v in hit["outputs"].items()}, hit["metrics"], hit["summary"]
        )
        run.set_tags({"distill.cached_from_run": hit["run_id"]})
        run.log_metrics(result.metrics)
        for k, p in result.outputs.items():
            run.record_output(k, p)
        if hit_dir == self.workdir:
            self.versions.update(hit.get("registered", {}))
        else:  # another run's outputs: registered in this run's registry too
            registered = self.register(run, result)
            _save(self.cache_file(name), key, result, hit["run_id"], registered)
        return result

    def execute(self, run: StageRun, name: str, key: str) -> StageResult:
        """Run stage ``name`` afresh, register its servable outputs, record it in the cache."""
        self.console.say(f"[distill] stage {name}: running")
        ctx = StageContext(
            self.cfg,
            self.workdir,
            self.teacher,
            self.corpus,
            run,
            dict(self.artifacts),
            self.console.progress,
        )
        result = stage_function(name)(ctx, getattr(self.cfg, name))
        registered = self.register(run, result)
        _save(self.cache_file(name), key, result, run.run_id, registered)
        return result

    def stage(self, tracker: Tracker, name: str, key: str) -> dict[str, Any]:
        """One stage under its own child run: replayed from the cache or run; the release gate
        after ``evaluate``. Returns the stage's entry of ``PipelineSummary.stages``."""
        found = find_cached(self.workdir, self.reuse, name, key)
        st = time.perf_counter()
        with tracker.stage(name) as run:
            run.log_params(getattr(self.cfg, name).model_dump(mode="json"))
            if found is not None:
                result = self.replay(run, name, key, *found)
            else:
                result = self.execute(run, name, key)
            self.artifacts.update(result.outputs)
            if name == "evaluate":
                self.report = self.release(run, result)
        took = time.perf_counter() - st
        self.console.say(f"[distill] stage {name}: done in {took:.0f}s")
        return {"seconds": took, "metrics": result.metrics, "run_id": run.run_id}

    def release(self, run: StageRun, result: StageResult) -> dict[str, Any]:
        """The release gate on the evaluate stage's table: verdicts, report.md, alias."""
        from distill.eval.release import release

        return release(
            run,
            self.cfg.gate,
            result.summary,
            self.versions,
            self.registered_name,
            self.workdir,
            self.console.say,
        )


def _run(cfg: PipelineConfig, workdir: Path, console: Console, verbose: bool) -> PipelineSummary:
    from distill.data.corpus import resolve_files
    from distill.data.pipeline import prepare_corpus
    from distill.lineage.tracker import Tracker
    from distill.raycluster import ensure_ray, link_session_logs

    say = console.say
    tracker = Tracker(cfg.tracking, workdir)
    tracker.experiment_id()  # fail fast on an unreachable tracking server
    say(f"[distill] pipeline {cfg.name!r}  workdir {workdir}  tracking {tracker.uri}")

    t0 = time.perf_counter()
    models = _resolve_models(cfg, say)
    # a missing corpus, impossible pruning targets, a missing extra corpus...: fail before Ray
    # starts and before any pipeline work
    resolve_files(cfg.data.corpus)
    run_preflights(cfg, (models.initial_student or models.teacher).path)
    ensure_ray(cfg.ray, verbose=verbose)
    link_session_logs(workdir)
    say("[distill] preparing corpus (Ray Data: read → tokenize → split by document → pack)")
    reuse = [Path(d).resolve() for d in cfg.reuse_from]
    teacher = models.teacher
    corpus = prepare_corpus(cfg.data, teacher.path, workdir / "data", [d / "data" for d in reuse])
    say(
        f"[distill] corpus: {corpus.train_rows} train / {corpus.heldout_rows} held-out rows "
        f"of {corpus.seq_len} tokens ({time.perf_counter() - t0:.0f}s)"
    )

    artifacts: dict[str, Path] = {"teacher": teacher.path}
    if models.initial_student is not None:
        artifacts["initial_student"] = models.initial_student.path
    with tracker.pipeline(cfg.name) as parent:
        summary = PipelineSummary(parent.run_id, tracker.uri, workdir, artifacts)
        _record_parent(parent, cfg, models, corpus)
        student = models.initial_student
        keys = stage_keys(
            cfg,
            _key(teacher.weights_sha256, corpus.fingerprint, student and student.weights_sha256),
        )
        pipe = _Pipeline(cfg, workdir, reuse, teacher, corpus, console, parent, artifacts)
        for name in cfg.stages:
            summary.stages[name] = pipe.stage(tracker, name, keys[name])
        summary.report = pipe.report
        parent.log_dict({k: str(v) for k, v in artifacts.items()}, "artifacts.json")
        parent.set_tags({f"registered.{k}": v for k, v in pipe.versions.items()})
    if not summary.stages:
        raise DistillError("no stage ran")
    return summary
