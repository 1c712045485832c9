"""MLflow lineage: one parent ``pipeline`` run, one nested child run per stage.

Every stage run gets params (its config), metrics, ``mlflow.log_input`` datasets and tags with the
URI and sha256 of its inputs and outputs. Ray workers log to a stage run through its
``tracking_uri`` and ``run_id`` (see ``StageRun.client_info``)::

    tracker = Tracker(cfg.tracking, workdir)
    with tracker.pipeline("smoke", params) as parent:
        with tracker.stage("prune") as run:
            run.log_metrics({"params_after": 1e6})
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.lineage.config import TrackingConfig


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return out


def resolve_tracking_uri(cfg: TrackingConfig, workdir: Path) -> str:
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout_s: float) -> None:
    """Fail fast with one clear message when a remote tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except Exception as e:
        raise DistillError(
            f"MLflow tracking server {uri} is unreachable ({type(e).__name__}: {e}); "
            "start it, fix tracking.uri / MLFLOW_TRACKING_URI, or unset both for local SQLite"
        ) from None


@dataclass
class StageRun:
    """A thin handle on one MLflow run (a stage, or the pipeline parent)."""

    run_id: str
    tracking_uri: str
    name: str

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    def client_info(self) -> dict[str, str]:
        """What a Ray worker needs to log to this run (pass it through the worker config)."""
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    def log_params(self, params: dict[str, Any], prefix: str = "") -> None:
        from mlflow.entities import Param

        flat = flatten(params, prefix)
        items = [Param(k, v[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        self.client.log_dict(self.run_id, obj, name)

    def log_figure(self, fig: Any, name: str) -> None:
        self.client.log_figure(self.run_id, fig, name)

    def record_input(self, key: str, uri: str | Path, sha256: str | None = None) -> None:
        self.set_tags({f"input.{key}.uri": str(uri)})
        if sha256:
            self.set_tags({f"input.{key}.sha256": sha256})

    def record_output(self, key: str, uri: str | Path, sha256: str | None = None) -> None:
        self.set_tags({f"output.{key}.uri": str(uri)})
        if sha256:
            self.set_tags({f"output.{key}.sha256": sha256})

    def log_input_dataset(self, name: str, source: str, digest: str, context: str) -> None:
        """``log_input`` of a dataset described by its source URI and digest (no data copy)."""
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        ds = MetaDataset(source=HTTPDatasetSource(url=source), name=name, digest=digest[:36])
        tag = InputTag(key="mlflow.data.context", value=context)
        self.client.log_inputs(
            self.run_id, datasets=[DatasetInput(dataset=ds._to_mlflow_entity(), tags=[tag])]
        )


class Tracker:
    def __init__(self, cfg: TrackingConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.uri = resolve_tracking_uri(cfg, self.workdir)
        self.parent: StageRun | None = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.uri)

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            check_reachable(self.uri, self.cfg.timeout_s)
            if self.uri.startswith("sqlite:///"):
                self.workdir.mkdir(parents=True, exist_ok=True)
            client = self.client
            exp = client.get_experiment_by_name(self.cfg.experiment)
            if exp is None:
                loc = None
                if self.uri.startswith("sqlite:///"):
                    loc = (self.workdir / "mlartifacts").resolve().as_uri()
                self._experiment_id = client.create_experiment(
                    self.cfg.experiment, artifact_location=loc
                )
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _start(self, name: str, parent: StageRun | None, tags: dict[str, str]) -> StageRun:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        all_tags = {MLFLOW_RUN_NAME: name, **tags}
        if parent is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent.run_id
        run = self.client.create_run(self.experiment_id(), tags=all_tags, run_name=name)
        return StageRun(run.info.run_id, self.uri, name)

    @contextmanager
    def pipeline(self, name: str, resume_run_id: str | None = None) -> Iterator[StageRun]:
        run = (
            StageRun(resume_run_id, self.uri, name)
            if resume_run_id
            else self._start(name, None, {"distill.kind": "pipeline"})
        )
        if resume_run_id:
            self.client.update_run(resume_run_id, status="RUNNING")
        self.parent = run
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        finally:
            self.client.set_terminated(run.run_id, status=status)

    @contextmanager
    def stage(self, stage: str) -> Iterator[StageRun]:
        run = self._start(stage, self.parent, {"distill.kind": "stage", "distill.stage": stage})
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        finally:
            self.client.set_terminated(run.run_id, status=status)
