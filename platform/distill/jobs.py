"""Run a pipeline on a Ray cluster as a Ray job, then follow it.

    distill submit pipelines/configs/smoke.yaml --address http://127.0.0.1:8265 \\
        --set workdir=/tmp/smoke
    distill status JOB_ID --address http://127.0.0.1:8265
    distill logs JOB_ID --address http://127.0.0.1:8265 [--no-wait]

The config is validated here first; the repository (the config's nearest ancestor holding
``pyproject.toml``) is uploaded as the job's ``working_dir`` and the ``distill`` package as a
``py_module``, so the cluster needs the dependencies but not this checkout. The job runs
``python -m distill.cli run <config> [--set ...]``; its ``mlflow run: <id>`` line gives the id.

Token authentication (Ray ≥ 2.52, on by default when ``~/.ray/auth_token`` exists): the
cluster's mode is read from the public ``/api/authentication_mode`` endpoint, and in ``token``
mode the token comes from ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token`` (print it on the head with ``ray get-auth-token``) and is sent as an
``Authorization: Bearer`` header. This does not depend on ``RAY_AUTH_MODE`` in this process,
which Ray caches when it is first imported. The job gets ``RAY_AUTH_MODE`` = the cluster's mode.

Only Ray's public job API is used (``JobSubmissionClient`` with ``headers``, ``submit_job``,
``get_job_status``, ``tail_job_logs``); ``JobsClient`` bounds each call with a timeout and turns
its errors into one ``distill: error:`` line.
"""

from __future__ import annotations

import argparse
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config.base import DistillError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0  # uploads of the working_dir go through the same session
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


class RetryLater(DistillError):
    """The cluster is up but not ready to take a job yet (e.g. no job agent registered)."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the client learned from the dashboard before submitting."""

    address: str
    auth_mode: str  # "token" | "disabled"
    headers: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    status: str
    run_id: str | None
    message: str | None = None


def resolve_address(address: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """``--address`` or ``$RAY_API_SERVER_ADDRESS`` / ``$RAY_ADDRESS`` or the local default."""
    addr = (
        address
        or environ.get("RAY_API_SERVER_ADDRESS")
        or environ.get("RAY_ADDRESS")
        or DEFAULT_ADDRESS
    )
    if addr.startswith("ray://") or addr == "auto":
        raise DistillError(
            f"address {addr!r} is not a dashboard address: give --address http://HOST:8265"
        )
    if "://" not in addr:
        addr = f"http://{addr}"
    return addr.rstrip("/")


def find_token(environ: Mapping[str, str] = os.environ, home: Path | None = None) -> str | None:
    """The Ray auth token, in Ray's order: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray."""
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip()
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        p = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = p.read_text().strip()
        except OSError as e:
            raise DistillError(f"RAY_AUTH_TOKEN_PATH={p}: cannot read the token: {e}") from None
        if not token:
            raise DistillError(f"RAY_AUTH_TOKEN_PATH={p} is empty")
        return token
    default = (home or Path.home()) / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


def _unreachable(address: str, e: Exception) -> DistillError:
    return DistillError(
        f"cannot reach the Ray dashboard at {address} ({type(e).__name__}). Start a cluster "
        "(ray start --head --dashboard-host 127.0.0.1) or pass --address http://HOST:8265 "
        "(or set RAY_ADDRESS)"
    )


def probe(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> ClusterInfo:
    """Ask the dashboard for its auth mode (public endpoint) and pick the token if needed."""
    import requests

    try:
        r = requests.get(f"{address}/api/authentication_mode", timeout=timeout_s)
    except requests.RequestException as e:
        raise _unreachable(address, e) from None
    if r.status_code == 404:
        mode = "disabled"  # a Ray older than 2.52 has no token auth
    else:
        try:
            r.raise_for_status()
            mode = str(r.json().get("authentication_mode", "disabled"))
        except (requests.RequestException, ValueError, AttributeError):
            raise DistillError(
                f"{address} answered HTTP {r.status_code} without a Ray auth mode: "
                "is it a Ray dashboard (default port 8265)?"
            ) from None
    headers: dict[str, str] = {}
    if mode == "token":
        token = find_token()
        if token is None:
            raise DistillError(
                f"the Ray cluster at {address} requires an auth token and none was found: "
                "run `ray get-auth-token` on the head node and export RAY_AUTH_TOKEN=<token> "
                "(or RAY_AUTH_TOKEN_PATH=<file>), then retry"
            )
        headers["Authorization"] = f"Bearer {token}"
    return ClusterInfo(address, mode, headers)


class JobsClient:
    """Ray's public ``JobSubmissionClient`` (headers for auth), wrapped: every call is bounded
    by a timeout and its errors become one ``DistillError`` naming the cluster."""

    def __init__(self, client: Any, info: ClusterInfo) -> None:
        self.client, self.info = client, info

    def _call(self, fn: Callable[..., Any], *args: Any, timeout_s: float = READ_TIMEOUT_S, **kw):
        import concurrent.futures

        import requests
        from ray.exceptions import AuthenticationError

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            return pool.submit(fn, *args, **kw).result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise DistillError(
                f"{self.info.address} did not answer within {timeout_s:.0f}s ({fn.__name__})"
            ) from None
        except requests.RequestException as e:
            raise _unreachable(self.info.address, e) from None
        except AuthenticationError as e:
            raise DistillError(
                f"{self.info.address} rejected the auth token: {str(e).splitlines()[0]}. Use "
                "the cluster's token (`ray get-auth-token` on the head) in RAY_AUTH_TOKEN"
            ) from None
        except RuntimeError as e:  # the client's "Request failed with status code N: ..."
            msg = str(e).strip()
            if re.search(r"status code 50[03]", msg) and "try again" in msg:
                raise RetryLater(f"{self.info.address}: {msg}") from None
            raise DistillError(f"{self.info.address}: {msg}") from None
        finally:
            pool.shutdown(wait=False)

    def submit_job(self, **kw: Any) -> str:
        return self._call(self.client.submit_job, **kw)

    def get_job_status(self, job_id: str) -> str:
        return str(
            self._call(self.client.get_job_status, job_id, timeout_s=CONNECT_TIMEOUT_S).value
        )

    def get_job_info(self, job_id: str) -> Any:
        return self._call(self.client.get_job_info, job_id, timeout_s=CONNECT_TIMEOUT_S)

    def get_job_logs(self, job_id: str) -> str:
        return self._call(self.client.get_job_logs, job_id)

    def tail(self, job_id: str, say: Say, timeout_s: float | None) -> str:
        """Stream the job's log with ``tail_job_logs`` (a websocket) until it closes; returns
        the text seen. ``timeout_s`` bounds the whole stream."""
        import asyncio

        chunks: list[str] = []

        async def run() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                chunks.append(chunk)
                if chunk.strip():
                    say(chunk.rstrip("\n"))

        try:
            asyncio.run(asyncio.wait_for(run(), timeout_s))
        except TimeoutError:
            raise DistillError(f"job {job_id} still running after {timeout_s:.0f}s") from None
        except RuntimeError as e:  # the websocket closed abnormally: the log so far stands
            say(f"[distill] log stream of {job_id} ended early ({e}); reading the stored log")
            return self.get_job_logs(job_id)
        return "".join(chunks)


def connect(address: str | None = None) -> tuple[JobsClient, ClusterInfo]:
    """A ``JobsClient`` with the auth header the cluster needs (from ``probe``)."""
    from ray.job_submission import JobSubmissionClient

    info = probe(resolve_address(address))
    jobs = JobsClient(None, info)
    jobs.client = jobs._call(
        JobSubmissionClient, info.address, headers=dict(info.headers), timeout_s=CONNECT_TIMEOUT_S
    )
    return jobs, info


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
    from distill.config.loader import load_config

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
    from distill.config.loader import load_config

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
