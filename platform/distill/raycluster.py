"""Connect to Ray: ``ray.address`` / ``$RAY_ADDRESS`` (a cluster) or a local ``ray.init()``."""

from __future__ import annotations

import os

from distill.lineage.config import RayConfig

WORKER_ENV = {
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def ensure_ray(cfg: RayConfig) -> None:
    """Initialize Ray once per process (a no-op inside a Ray job or when already connected)."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    env_vars = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
    if "DISTILL_CACHE" in os.environ:
        env_vars["DISTILL_CACHE"] = os.environ["DISTILL_CACHE"]
    kwargs: dict = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            include_dashboard=False,
            **kwargs,
        )
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
