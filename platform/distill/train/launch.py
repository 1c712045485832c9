"""Start a distillation run on Ray Train (``TorchTrainer``) and wait for it::

    metrics = launch(spec, run_name="distill-smoke-1a2b", storage_path=Path("runs/x/ray_results"))

A run with the same ``run_name`` and ``storage_path`` resumes from its latest checkpoint; worker
failures restart the group up to ``cfg.max_failures`` times, each restart resuming likewise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.train.loop import LoopSpec, train_loop_per_worker

WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


def check_cluster(num_workers: int, cpus_per_worker: float, use_gpu: bool) -> None:
    """Fail before training when the Ray cluster cannot place the worker group (it would hang)."""
    import ray

    res = ray.cluster_resources()
    need = num_workers * cpus_per_worker
    if res.get("CPU", 0) + 1e-9 < need:
        raise DistillError(
            f"distill needs {need:g} CPUs ({num_workers} workers × {cpus_per_worker:g}) but the Ray "
            f"cluster has {res.get('CPU', 0):g}: lower distill.num_workers/cpus_per_worker"
        )
    if use_gpu and res.get("GPU", 0) < num_workers:
        raise DistillError(
            f"distill.use_gpu needs {num_workers} GPUs; the Ray cluster has {res.get('GPU', 0):g}"
        )


def worker_env(use_gpu: bool, cpus_per_worker: float) -> dict[str, str]:
    env = dict(WORKER_ENV)
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(max(int(cpus_per_worker), 1))
    if "DISTILL_CACHE" in os.environ:
        env["DISTILL_CACHE"] = os.environ["DISTILL_CACHE"]
    return env


def launch(
    spec: LoopSpec, run_name: str, storage_path: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run the loop on ``cfg.num_workers`` workers; return rank 0's final reported metrics.

    ``env`` adds environment variables to the workers (the tests' fault injection uses it)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = spec.cfg
    check_cluster(cfg.num_workers, cfg.cpus_per_worker, cfg.use_gpu)
    resources: dict[str, float] = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    Path(storage_path).mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.model_dump(mode="json"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(Path(storage_path).resolve()),
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
        raise DistillError(f"distillation run {run_name!r} failed: {type(e).__name__}: {e}") from e
    if result.error is not None:
        raise DistillError(f"distillation run {run_name!r} failed: {result.error}")
    return dict(result.metrics or {})
