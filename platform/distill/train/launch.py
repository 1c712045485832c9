"""Start a distillation run on Ray Train (``TorchTrainer``) and wait for it::

    metrics = launch(spec, run_name="distill-smoke-1a2b", storage_path="runs/x/ray_results")
    metrics = launch(spec, run_name="distill-smoke-1a2b", storage_path="s3://bucket/ray_results")

A run with the same ``run_name`` and ``storage_path`` resumes from its latest checkpoint; worker
failures (a crashed worker, a lost node) restart the group up to ``cfg.max_failures`` times,
each restart resuming likewise. With ``distill.teacher_placement: actor`` the workers share one
teacher actor per node (``distill.train.teacher``), owned by the worker group: it ends with the
run, and a restarted group starts a new one. Every worker records the Ray node it ran on under
``<storage_path>/<run_name>/distill-nodes/``; the returned metrics list them (``train_node_ids``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

from distill.config.base import DistillError
from distill.raycluster import worker_env
from distill.storage import ensure_dir, read_texts, write_text
from distill.train.loop import LoopSpec, train_loop_per_worker

NODES_DIR = "distill-nodes"
_NODES_KEY = "_distill_nodes_uri"
PROGRESS_EVERY_S = 5.0  # how often a stage's driver reads the workers' progress from MLflow


def progress_reader(
    tracking: dict[str, str] | None,
) -> Callable[[], tuple[float, dict[str, float]] | None]:
    """``(step, {loss, tok_s})`` as the rank-0 worker last logged them to the run in
    ``tracking`` (``LoopSpec.tracking``; ``None`` before the first step): the driver's view of
    a run in the Ray Train workers, for the stage's progress bar::

        with progress.task("distill", total, "steps") as bar, polling(
            bar, progress_reader(spec.tracking), PROGRESS_EVERY_S
        ):
            launch(spec, name, storage)
    """

    clients: list[Any] = []  # one client, made on the first read (in the polling thread)

    def read() -> tuple[float, dict[str, float]] | None:
        if not tracking:
            return None
        if not clients:
            from mlflow import MlflowClient

            clients.append(MlflowClient(tracking["tracking_uri"]))
        client, run_id = clients[0], tracking["run_id"]
        speed = client.get_metric_history(run_id, "tokens_per_s")
        if not speed:
            return None
        last = max(speed, key=lambda m: (m.step, m.timestamp))
        loss = client.get_run(run_id).data.metrics.get("train/loss")
        return float(last.step), ({} if loss is None else {"loss": loss, "tok_s": last.value})

    return read


def check_cluster(
    num_workers: int,
    cpus_per_worker: float,
    use_gpu: bool,
    teacher_cpus: float = 0.0,
    teacher_gpus: float = 0.0,
) -> None:
    """Fail before training when the Ray cluster cannot place the worker group and the teacher
    actor (``teacher_*``: its reservation; counted once, as on a single node) -- it would hang."""
    import ray

    res = ray.cluster_resources()
    need = num_workers * cpus_per_worker
    if res.get("CPU", 0) + 1e-9 < need + teacher_cpus:
        actor = f" + {teacher_cpus:g} for the teacher actor" if teacher_cpus else ""
        raise DistillError(
            f"distill needs {need + teacher_cpus:g} CPUs ({num_workers} workers × "
            f"{cpus_per_worker:g}{actor}) but the Ray cluster has {res.get('CPU', 0):g}: lower "
            "distill.num_workers/cpus_per_worker (or distill.teacher_actor.num_cpus)"
        )
    gpus = (num_workers if use_gpu else 0) + teacher_gpus
    if gpus and res.get("GPU", 0) + 1e-9 < gpus:
        raise DistillError(
            f"distill needs {gpus:g} GPUs (use_gpu: {num_workers if use_gpu else 0}, "
            f"teacher_actor.num_gpus: {teacher_gpus:g}); the Ray cluster has {res.get('GPU', 0):g}"
        )


def _worker(config: dict[str, Any]) -> None:
    """Record which Ray node this worker runs on, then run the training loop."""
    import ray
    import ray.train

    config = dict(config)
    nodes_uri = config.pop(_NODES_KEY)
    rank = ray.train.get_context().get_world_rank()
    node = ray.get_runtime_context().get_node_id()
    record = {"rank": rank, "node_id": node, "pid": os.getpid()}
    write_text(nodes_uri, f"rank{rank}-{node[:12]}-{os.getpid()}.json", json.dumps(record))
    train_loop_per_worker(config)


def failure_message(e: BaseException) -> str:
    """A worker's own ``DistillError`` when one caused the failure (Ray's summary cuts the
    middle of long tracebacks), else the exception as Ray gives it."""
    failures = getattr(e, "worker_failures", None) or {}
    for rank, err in sorted(failures.items()):
        cause = getattr(err, "cause", err)
        if isinstance(cause, DistillError):
            return f"rank {rank}: {cause}"
    return f"{type(e).__name__}: {e}"


def worker_nodes(nodes_uri: str) -> list[str]:
    """Node ids every worker of the run (all attempts) recorded, sorted."""
    return sorted({json.loads(t)["node_id"] for t in read_texts(nodes_uri)})


def launch(
    spec: LoopSpec,
    run_name: str,
    storage_path: str | os.PathLike,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the loop on ``cfg.num_workers`` workers; return rank 0's final reported metrics plus
    ``train_node_ids``.

    ``env`` adds environment variables to the workers (the tests' fault injection uses it)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = spec.cfg
    actor = cfg.needs_teacher and cfg.teacher_placement == "actor"
    t_cpus = cfg.teacher_actor.num_cpus if actor else 0.0
    t_gpus = cfg.teacher_actor.num_gpus if actor else 0.0
    check_cluster(cfg.num_workers, cfg.cpus_per_worker, cfg.use_gpu, t_cpus, t_gpus)
    if actor and spec.teacher_actor is None:  # a fresh name per launch: no stale actor reused
        spec = spec.model_copy(update={"teacher_actor": f"{run_name}-{uuid.uuid4().hex[:8]}"})
    resources: dict[str, float] = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    storage = ensure_dir(str(storage_path))
    nodes_uri = f"{storage.rstrip('/')}/{run_name}/{NODES_DIR}"
    trainer = TorchTrainer(
        _worker,
        train_loop_config={**spec.model_dump(mode="json"), _NODES_KEY: nodes_uri},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={
                "env_vars": {**worker_env(cfg.use_gpu, cfg.cpus_per_worker), **(env or {})}
            },
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:
        raise DistillError(f"distillation run {run_name!r} failed: {failure_message(e)}") from e
    if result.error is not None:
        raise DistillError(f"distillation run {run_name!r} failed: {failure_message(result.error)}")
    return {**dict(result.metrics or {}), "train_node_ids": worker_nodes(nodes_uri)}
