"""A two-node Ray cluster (head + worker, `ray start` in their own process groups, 1 CPU and a
custom resource each): the pipeline's corpus, soft labels and KD run on both nodes, and killing
the worker node's raylet mid-KD is survived (Ray Train restarts the group from the last
checkpoint on a replacement node; the final step count is the configured one).

Runs in `make test` / .ci/run; `--skip-cluster` (or DISTILL_SKIP_CLUSTER=1) skips it locally,
`make test-cluster` runs only it. Nodes are stopped by process group, never `ray stop`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from nodeprocs import end_group, free_ports

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "pipelines" / "configs" / "smoke.yaml"
VENV_BIN = Path(sys.executable).parent
MAX_STEPS = 16


class Cluster:
    """Head and worker nodes on loopback, each its own process group, temp dir and ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(32)
        self.gcs_port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.watcher: NodeWatcher | None = None
        self.env = dict(os.environ)
        self.env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            # a lost node is declared dead after ~2 s instead of ~15 s
            RAY_health_check_period_ms="500",
            RAY_health_check_failure_threshold="4",
            # Ray Train's default 2 s poll, not conftest's 0.25 s: with 0.25 s, two full runs of
            # 2026-12-05 restarted KD from step 0, the second although the controller had
            # registered checkpoint-step2 before the kill (cause not found yet); with 2 s every
            # full run and CI passed
            RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="2.0",
        )
        self.env.pop("RAY_ADDRESS", None)

    def start(self, name: str, resource: str) -> subprocess.Popen:
        head = name == "head"
        ports = free_ports(6)
        cmd = [
            str(VENV_BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--resources={json.dumps({resource: 1})}",
            "--object-store-memory=1000000000",
            f"--node-manager-port={ports[0]}",
            f"--object-manager-port={ports[1]}",
            f"--dashboard-agent-listen-port={ports[2]}",
            f"--dashboard-agent-grpc-port={ports[3]}",
            f"--metrics-export-port={ports[4]}",
            f"--runtime-env-agent-port={ports[5]}",
            f"--temp-dir={self.root / name}",
        ]
        if head:
            cmd += [
                "--head",
                f"--port={self.gcs_port}",
                f"--ray-client-server-port={free_ports(1)[0]}",
                "--include-dashboard=false",
            ]
        else:
            cmd.append(f"--address={self.address}")
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the node outlives this call
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.nodes[name] = proc
        return proc

    def wait_for(self, resources: list[str], timeout_s: float = 240) -> None:
        """Until the live nodes are exactly ``resources``; a node whose `ray start` exited (a
        raylet slow to register on a loaded machine: Ray waits only 30 s) is started again."""
        deadline = time.monotonic() + timeout_s
        if self.watcher is None:
            self.watcher = NodeWatcher(self.address, self.env)
        while sorted(self.watcher.alive().values()) != sorted(resources):
            for name, proc in list(self.nodes.items()):
                if proc.poll() is not None:
                    self.start(name, "head_node" if name == "head" else "worker_node")
            if time.monotonic() > deadline:
                logs = [(self.root / f"{n}.log").read_text()[-2000:] for n in self.nodes]
                raise RuntimeError("\n".join(logs))
            time.sleep(0.5)

    def raylet_pid(self, name: str) -> int:
        import psutil

        pgid = self.nodes[name].pid
        for p in psutil.process_iter(["pid", "name"]):
            try:
                if p.info["name"] == "raylet" and os.getpgid(p.info["pid"]) == pgid:
                    return p.info["pid"]
            except (ProcessLookupError, psutil.Error):
                continue
        raise RuntimeError(f"no raylet in the process group of node {name}")

    def keep_logs(self, dest: Path) -> None:
        """Copy every node's Ray logs to ``dest`` (the temp dirs go at teardown)."""
        for logs in self.root.glob("*/session_latest/logs"):
            shutil.copytree(logs, dest / logs.parts[-3], dirs_exist_ok=True)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        end_group(*self.nodes.values())


_WATCH = """
import json, os, sys, time, ray
for attempt in range(60):
    try:
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)
        break
    except Exception:
        time.sleep(2)
for _ in sys.stdin:
    nodes = {n["NodeID"]: [k for k in n["Resources"] if k.endswith("_node")]
             for n in ray.nodes() if n["Alive"]}
    print(json.dumps(nodes), flush=True)
"""


class NodeWatcher:
    """One driver connected for the whole module (a driver costs seconds to start): each
    ``alive()`` asks it for ``{node id: custom resource}`` of the live nodes."""

    def __init__(self, address: str, env: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WATCH],
            env={**env, "RAY_ADDRESS": address},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def alive(self) -> dict[str, str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        while line and not line.startswith("{"):  # Ray's own notices (a node marked dead...)
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the node watcher could not connect to the cluster")
        return {k: (v[0] if v else "") for k, v in json.loads(line).items()}

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def registered_checkpoint(storage: Path) -> str | None:
    """The newest checkpoint Ray Train's controller has registered under ``storage`` (its
    checkpoint manager writes ``checkpoint_manager_snapshot.json`` on each registration), or
    None before the first."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except (OSError, json.JSONDecodeError):  # being rewritten: read it on the next poll
            continue
        if latest:
            return latest["checkpoint_dir_name"]
    return None


@pytest.fixture(scope="module")
def cluster():
    # Ray's unix sockets live under --temp-dir: keep the path short (AF_UNIX limit ~107 chars)
    c = Cluster(Path(tempfile.mkdtemp(prefix="distill-2n-")))
    try:
        c.start("head", "head_node")
        c.wait_for(["head_node"])
        c.start("worker", "worker_node")
        c.wait_for(["head_node", "worker_node"])
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


@pytest.mark.timeout(1800)
def test_pipeline_on_two_nodes_survives_a_lost_worker_node(cluster, tmp_path):
    nodes = cluster.watcher.alive()
    head_id = next(k for k, v in nodes.items() if v == "head_node")
    worker_id = next(k for k, v in nodes.items() if v == "worker_node")
    workdir, ckpt = tmp_path / "run", tmp_path / "ckpt"
    overrides = {
        "workdir": f"file://{workdir}",  # a non-default local URI for the workdir ...
        "distill.storage_path": f"file://{ckpt}",  # ... and for the Ray Train checkpoints
        "stages": "[soft_labels,distill]",
        "data.corpus.max_documents": "16",
        "data.max_train_rows": "32",
        "data.max_heldout_rows": "8",
        "data.tokenize_batch_size": "64",
        "soft_labels.num_actors": "2",
        "soft_labels.placement": "strict_spread",  # one teacher per node
        "soft_labels.rows_per_shard": "8",
        "soft_labels.batch_size": "4",  # 8 batches of the 32 rows
        "distill.num_workers": "2",
        "distill.cpus_per_worker": "1",
        "distill.max_steps": str(MAX_STEPS),
        "distill.checkpoint_every": "2",
        "distill.max_failures": "1",
    }
    cmd = [sys.executable, "-m", "distill.cli", "run", str(SMOKE)]
    for k, v in overrides.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    log = open(tmp_path / "pipeline.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # kill the worker node's raylet once Ray Train's controller has registered a KD
        # checkpoint (a restart restores only registered ones; a directory on disk may not be)
        deadline = time.monotonic() + 900
        while (killed_at := registered_checkpoint(ckpt)) is None:
            assert proc.poll() is None, (tmp_path / "pipeline.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no registered KD checkpoint within 900 s"
            time.sleep(0.2)
        os.kill(cluster.raylet_pid("worker"), signal.SIGKILL)
        end_group(cluster.nodes.pop("worker"))
        cluster.start("worker2", "worker_node")  # a replacement node joins the cluster
        cluster.wait_for(["head_node", "worker_node"])
        rc = proc.wait(timeout=600)
    except BaseException:
        cluster.keep_logs(tmp_path / "cluster-logs")
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "pipeline.log").read_text()
    assert rc == 0, out[-4000:]
    assert "distill results" not in out  # no evaluate stage here: the run ended after distill

    manifest = json.loads((workdir / "labels" / "manifest.json").read_text())
    assert {head_id, worker_id} <= set(manifest["nodes"]), manifest["nodes"]
    distill = json.loads((workdir / "stages" / "distill.json").read_text())
    m, summary = distill["metrics"], distill["summary"]
    assert m["steps"] == MAX_STEPS  # the same step count as an uninterrupted run
    assert m["resumed_from_step"] >= 2, (m, killed_at)  # resumed from a checkpoint, not step 0
    assert {head_id, worker_id} <= set(summary["train_node_ids"]), summary["train_node_ids"]
    assert len(summary["train_node_ids"]) == 3  # head, lost worker, replacement
    assert (workdir / "student" / "model.safetensors").is_file()
    assert (workdir / "logs" / "distill.log").is_file()
