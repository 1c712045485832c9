"""Storage locations (paths, file://, object-store URIs) and the one worker-env table."""

import os
import socket

import pytest

from distill.config.base import DistillError
from distill.raycluster import base_env, worker_env
from distill.storage import ensure_dir, local_path, normalize, read_texts, write_text


def test_worker_env_follows_use_gpu():
    cpu, gpu = worker_env(False, 2), worker_env(True, 4)
    assert cpu["DS_ACCELERATOR"] == "cpu" and cpu["OMP_NUM_THREADS"] == "2"
    assert gpu["DS_ACCELERATOR"] == "cuda" and "OMP_NUM_THREADS" not in gpu
    # the job-wide env (ray.init / job runtime_env) never picks an accelerator
    assert "DS_ACCELERATOR" not in base_env()
    assert base_env().items() <= cpu.items() and base_env().items() <= gpu.items()


def test_parquet_footer_actors_default_and_override(monkeypatch):
    """ensure_ray sets Ray Data's FooterReader pool size unless the user's env already does."""
    import ray

    from distill.ray_config import RayConfig
    from distill.raycluster import FOOTER_ACTORS_VAR, ensure_ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no cluster: only the env part
    monkeypatch.delenv(FOOTER_ACTORS_VAR, raising=False)
    ensure_ray(RayConfig())
    assert os.environ[FOOTER_ACTORS_VAR] == "2"
    monkeypatch.setenv(FOOTER_ACTORS_VAR, "16")
    ensure_ray(RayConfig(parquet_footer_actors=4))
    assert os.environ[FOOTER_ACTORS_VAR] == "16"


def test_local_uris_and_round_trip(tmp_path):
    assert local_path(f"file://{tmp_path}/a") == tmp_path / "a"
    assert normalize("s3://bucket/prefix") == "s3://bucket/prefix"
    with pytest.raises(DistillError, match="storage_path"):
        local_path("s3://bucket/prefix")
    loc = ensure_dir(f"file://{tmp_path}/ckpt/x")
    assert loc == str(tmp_path / "ckpt" / "x") and (tmp_path / "ckpt" / "x").is_dir()
    write_text(f"file://{tmp_path}/n", "a.json", "1")
    write_text(str(tmp_path / "n"), "b.json", "2")
    assert read_texts(f"file://{tmp_path}/n") == ["1", "2"]
    assert read_texts(str(tmp_path / "missing")) == []


def test_unreachable_object_store_is_one_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"s3://bucket/ckpt?endpoint_override=127.0.0.1:{port}&scheme=http"
    with pytest.raises(DistillError, match="storage 's3://bucket/ckpt"):
        ensure_dir(uri, timeout_s=1)
