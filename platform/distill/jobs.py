"""Run a pipeline on a Ray cluster as a Ray job, then follow it.

    distill submit pipelines/configs/smoke.yaml --address http://127.0.0.1:8265 \\
        --set workdir=/tmp/smoke
    distill status JOB_ID --address http://127.0.0.1:8265
    distill logs JOB_ID --address http://127.0.0.1:8265 [--no-wait]

The config is validated here first; the repository (the config's nearest ancestor holding
``pyproject.toml``) is uploaded as the job's ``working_dir`` and the ``distill`` package as a
``py_module``, so the cluster needs the dependencies but not this checkout. The job runs
``python -m distill.cli run <config> [--set ...]``; its ``mlflow run: <id>`` line gives the id.

The cluster's auth mode and token, and the bounded client over Ray's public job API
(``JobSubmissionClient``, ``tail_job_logs``): ``distill.jobs_client``. The job gets
``RAY_AUTH_MODE`` = the cluster's mode.
"""

from __future__ import annotations

import argparse
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.jobs_client import (  # noqa: F401 - re-exported: the CLI and tests use distill.jobs
    ClusterInfo,
    JobsClient,
    RetryLater,
    connect,
    find_token,
    probe,
    resolve_address,
)

POLL_S = 2.0
AGENT_WAIT_S = 90.0  # a freshly started head takes a while to register its job agent
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
RUN_ID_RE = re.compile(r"^mlflow run: ([0-9a-f]{32})\b", re.MULTILINE)
# Relative to the repository root (gitignore syntax). ``.gitignore`` is honoured as well.
EXCLUDES = [
    ".venv",
    ".git",
    "runs",
    "mlruns",
    "mlartifacts",
    "*.db",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
    "/platform",  # shipped as a py_module instead
    "/logs",  # GPTQModel writes its logs here
    "/build",
    "/dist",
]
# DeepSpeed's accelerator is not among them: each trainer sets it from distill.use_gpu
# (distill.raycluster.worker_env), so a job-wide value can never reach a GPU worker.
PASS_THROUGH_ENV = ("MLFLOW_TRACKING_URI", "DISTILL_CACHE", "HF_HOME")
Say = Callable[[str], None]


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    status: str
    run_id: str | None
    message: str | None = None


def repo_root(config: Path) -> Path:
    """The nearest ancestor of ``config`` holding ``pyproject.toml`` (shipped as working_dir)."""
    for d in config.resolve().parents:
        if (d / "pyproject.toml").is_file():
            return d
    raise DistillError(
        f"{config}: no pyproject.toml above it; submit a config inside the distill repository "
        "(the repository is uploaded as the job's working_dir)"
    )


def job_spec(
    config: Path,
    overrides: list[str],
    info: ClusterInfo,
    environ: Mapping[str, str] = os.environ,
    verbose: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Entrypoint and runtime_env for ``config``; validates the config before anything runs."""
    import shlex

    import distill
    from distill.pipeline import load_config

    load_config(config, overrides)  # fail here, not on the cluster
    root = repo_root(config)
    rel = config.resolve().relative_to(root).as_posix()
    parts = ["python", "-m", "distill.cli", "run", rel]
    for item in overrides:
        parts += ["--set", item]
    if verbose:
        parts.append("--verbose")
    env = {
        "RAY_AUTH_MODE": info.auth_mode,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        # distill.raycluster.ensure_ray passes env_vars to ray.init too; inside a job Ray
        # refuses overlapping keys unless told to merge them (per key, same values here).
        "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
    }
    env.update({k: environ[k] for k in PASS_THROUGH_ENV if environ.get(k)})
    runtime_env = {
        "working_dir": str(root),
        "py_modules": [str(Path(distill.__file__).parent)],
        "excludes": list(EXCLUDES),
        "env_vars": env,
    }
    return shlex.join(parts), runtime_env


def parse_run_id(logs: str) -> str | None:
    """The MLflow pipeline run id from ``distill run`` output (last occurrence)."""
    found = RUN_ID_RE.findall(logs)
    return found[-1] if found else None


def follow(
    client: JobsClient, job_id: str, say: Say = print, timeout_s: float | None = None
) -> tuple[str, str]:
    """Stream the job's log until the job ends; return (status, full log)."""
    logs = client.tail(job_id, say, timeout_s)
    deadline = time.monotonic() + 30  # the stream closes as the job ends; the status follows
    status = client.get_job_status(job_id)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(POLL_S)
        status = client.get_job_status(job_id)
    return status, logs


def submit(
    config: Path,
    overrides: list[str] | None = None,
    address: str | None = None,
    wait: bool = True,
    say: Say = print,
    timeout_s: float | None = None,
    verbose: bool = False,
) -> JobOutcome:
    """Submit ``config`` as a Ray job; with ``wait`` stream its logs until it ends."""
    config = Path(config)
    overrides = list(overrides or [])
    from distill.pipeline import load_config

    load_config(config, overrides)  # a bad config fails before any connection
    repo_root(config)
    client, info = connect(address)
    entrypoint, runtime_env = job_spec(config, overrides, info, verbose=verbose)
    name = config.stem
    submission_id = f"distill-{name}-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=submission_id,
                metadata={
                    "distill.config": config.as_posix(),
                    "distill.overrides": " ".join(overrides),
                },
            )
            break
        except RetryLater as e:
            if time.monotonic() > deadline:
                raise DistillError(f"{e} (waited {AGENT_WAIT_S:.0f}s)") from None
            time.sleep(POLL_S)
    say(f"[distill] submitted job {job_id} to {info.address} (auth {info.auth_mode})")
    say(f"[distill] entrypoint: {entrypoint}")
    if not wait:
        say(f"[distill] follow it: distill logs {job_id} --address {info.address}")
        return JobOutcome(job_id, "PENDING", None)
    try:
        status, logs = follow(client, job_id, say, timeout_s)
    except KeyboardInterrupt:
        say(f"[distill] job {job_id} keeps running: distill logs {job_id} --address {info.address}")
        raise
    message = client.get_job_info(job_id).message
    return JobOutcome(job_id, status, parse_run_id(logs), message)


def main(args: argparse.Namespace) -> int:
    """``distill submit | status | logs`` (called by ``distill.cli``)."""
    if args.command == "submit":
        out = submit(
            Path(args.target),
            args.set,
            args.address,
            wait=not args.no_wait,
            verbose=getattr(args, "verbose", False),
        )
        if out.status == "PENDING":
            print(f"job: {out.job_id}")
            return 0
        print(f"job {out.job_id}: {out.status}" + (f" ({out.message})" if out.message else ""))
        if out.run_id:
            print(f"mlflow run: {out.run_id}")
        return 0 if out.status == "SUCCEEDED" else 1
    if args.set:
        raise DistillError(f"--set applies to `distill submit`, not `distill {args.command}`")
    client, _ = connect(args.address)
    if args.command == "status":
        job = client.get_job_info(args.target)
        print(f"job {args.target}: {job.status}" + (f" ({job.message})" if job.message else ""))
        return 0
    if args.command == "logs":
        if args.no_wait:
            logs = client.get_job_logs(args.target)
            print(logs, end="")
        else:
            status, logs = follow(client, args.target)
            print(f"job {args.target}: {status}")
        run_id = parse_run_id(logs)
        if run_id:
            print(f"mlflow run: {run_id}")
        return 0
    raise DistillError(f"unknown jobs command {args.command!r}")
