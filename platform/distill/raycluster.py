"""Connect to Ray (``ray.address`` / ``$RAY_ADDRESS``, else a local ``ray.init()``) and the one
table of environment variables Ray workers get::

    ensure_ray(cfg.ray)                      # quiet: worker logs stay in Ray's session logs
    ensure_ray(cfg.ray, verbose=True)        # `distill run --verbose`: stream them, progress bars
    worker_env(use_gpu=False, cpus=1.0)      # a Ray Train worker's env_vars

Quiet (the default) keeps Ray's own chatter (worker log lines such as Ray Train's controller
polling, Ray Data's progress dumps) off the console so the pipeline's progress and final table
stay readable; everything is still written to Ray's session logs, which ``link_session_logs``
makes reachable from ``<workdir>/logs/ray``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from distill.ray_config import RayConfig

# Every Ray process distill starts (job-wide runtime env): no accelerator choice here, since
# Ray merges the job's env_vars into Ray Train workers (see worker_env).
BASE_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}
FOOTER_ACTORS_VAR = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"  # read when Ray Data first reads Parquet
PASS_THROUGH = ("DISTILL_CACHE", FOOTER_ACTORS_VAR)
_session_dir: str | None = None


def base_env() -> dict[str, str]:
    env = dict(BASE_ENV)
    env.update({k: os.environ[k] for k in PASS_THROUGH if k in os.environ})
    return env


def worker_env(use_gpu: bool, cpus: float) -> dict[str, str]:
    """A Ray Train worker's env: DeepSpeed's accelerator follows ``use_gpu`` (``cuda`` with a GPU,
    ``cpu`` + ``OMP_NUM_THREADS`` = reserved CPUs without), set per trainer so a job-wide value
    can never put a GPU job on DeepSpeed's CPU accelerator."""
    env = base_env()
    if use_gpu:
        env["DS_ACCELERATOR"] = "cuda"
    else:
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(max(int(cpus), 1))
    return env


def ensure_ray(cfg: RayConfig, verbose: bool = False) -> None:
    """Initialize Ray once per process (a no-op inside a Ray job or when already connected)."""
    global _session_dir
    import ray

    if cfg.parquet_footer_actors is not None:  # before this process's first read_parquet
        os.environ.setdefault(FOOTER_ACTORS_VAR, str(cfg.parquet_footer_actors))
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {
        "runtime_env": {"env_vars": base_env()},
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if address:
        info = ray.init(address=address, **kwargs)
    else:
        info = ray.init(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=False, **kwargs
        )
    _session_dir = (getattr(info, "address_info", None) or {}).get("session_dir")
    set_console_verbosity(verbose)


def set_console_verbosity(verbose: bool) -> None:
    """Ray Data progress bars and its INFO console lines only when ``verbose`` (its log file in
    the session dir keeps everything)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    level = logging.INFO if verbose else logging.WARNING
    for name in ("ray.data", "ray.train"):
        for h in logging.getLogger(name).handlers:
            if not isinstance(h, logging.FileHandler) and type(h).__name__ != "SessionFileHandler":
                h.setLevel(level)


def link_session_logs(workdir: Path) -> Path | None:
    """``<workdir>/logs/ray`` → this machine's Ray session logs (worker stdout/stderr, Ray Data
    and Ray Train logs), when the session lives on this machine."""
    if not _session_dir or not Path(_session_dir, "logs").is_dir():
        return None
    link = Path(workdir) / "logs" / "ray"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(_session_dir, "logs"), target_is_directory=True)
    return link
