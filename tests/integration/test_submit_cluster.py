"""`distill submit` against a real local Ray cluster with token auth, then the MLflow lineage.

The cluster is `ray start --head --block` in its own process group with its own temp dir, on
loopback, with a token made for this test (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN); teardown ends
that process group by its id. Never `ray stop`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from nodeprocs import end_group, free_ports

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "pipelines" / "configs" / "smoke.yaml"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_cluster():
    """(dashboard address, token) of a 2-CPU head node started for this module."""
    import requests

    # Ray's unix sockets live under --temp-dir: keep the path short (AF_UNIX limit ~107 chars)
    tmp = Path(tempfile.mkdtemp(prefix="distill-ray-"))
    token = secrets.token_hex(32)
    # Every fixed default port (agent 52365, client server 10001) may be held by another
    # engineer's cluster on this machine: give each one a free port.
    gcs_port, dash_port, agent_port, client_port = free_ports(4)
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # the job driver runs `python`
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--ray-client-server-port={client_port}",
        f"--temp-dir={tmp / 'ray'}",
        "--num-cpus=2",
        "--include-dashboard=true",
    ]
    log = open(tmp / "ray-start.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(tmp / 'ray-start.log').read_text()}")
            try:
                r = requests.get(
                    f"{address}/api/version",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=2,
                )
                if r.ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray dashboard did not answer within 120 s")
            time.sleep(1)
        yield address, token
    finally:
        end_group(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.timeout(600)
def test_submit_smoke_pipeline_and_lineage(ray_cluster, tmp_path, monkeypatch, capsys):
    from distill import cli, jobs
    from distill.lineage.show import lineage

    address, token = ray_cluster
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / "smoke"

    lines: list[str] = []
    # two stages are enough to test the job path (upload, entrypoint, streamed logs, lineage);
    # the whole smoke pipeline runs in tests/e2e and on the two-node cluster
    out = jobs.submit(
        SMOKE,
        [f"workdir={workdir}", "stages=[soft_labels,prune]"],
        address=address,
        say=lines.append,
        timeout_s=360,
    )
    logs = "\n".join(lines)
    assert out.status == "SUCCEEDED", logs[-4000:]
    assert out.run_id and len(out.run_id) == 32
    assert "[distill] stage prune: done" in logs  # logs were streamed
    assert (workdir / "labels" / "manifest.json").is_file()

    info = lineage(f"sqlite:///{workdir}/mlflow.db", out.run_id)
    assert info["status"] == "FINISHED"
    stages = {s["stage"]: s for s in info["stages"]}
    assert {"soft_labels", "prune"} <= set(stages)
    assert all(s["status"] == "FINISHED" for s in stages.values())

    capsys.readouterr()
    assert cli.main(["status", out.job_id, "--address", address]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert cli.main(["logs", out.job_id, "--address", address, "--no-wait"]) == 0
    assert f"mlflow run: {out.run_id}" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_wrong_or_missing_token_is_one_clear_error(ray_cluster, tmp_path, monkeypatch):
    from distill.config.base import DistillError
    from distill.jobs import connect

    address, _ = ray_cluster
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    with pytest.raises(DistillError, match="rejected the auth token"):
        connect(address)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    with pytest.raises(DistillError, match="ray get-auth-token"):
        connect(address)
