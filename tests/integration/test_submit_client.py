"""The job client without a cluster: job spec, token lookup, address and error handling."""

from __future__ import annotations

import shlex
import socket
import time
from pathlib import Path

import pytest

from distill.config.base import DistillError
from distill.jobs import ClusterInfo, find_token, job_spec, parse_run_id, resolve_address

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "pipelines" / "configs" / "smoke.yaml"


def test_job_spec_entrypoint_and_runtime_env():
    info = ClusterInfo("http://127.0.0.1:8265", "token", {"Authorization": "Bearer x"})
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "DISTILL_CACHE": "/cache"}
    entry, env = job_spec(SMOKE, ["workdir=/tmp/a b", "evaluate.max_rows=8"], info, environ)
    assert shlex.split(entry) == [
        "python",
        "-m",
        "distill.cli",
        "run",
        "pipelines/configs/smoke.yaml",
        "--set",
        "workdir=/tmp/a b",
        "--set",
        "evaluate.max_rows=8",
    ]
    assert Path(env["working_dir"]) == REPO
    assert Path(env["py_modules"][0]) == REPO / "platform" / "distill"
    assert {".venv", ".git", "runs"} <= set(env["excludes"])
    ev = env["env_vars"]
    assert ev["RAY_AUTH_MODE"] == "token"
    assert ev["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert ev["DISTILL_CACHE"] == "/cache"
    assert ev["HF_HUB_OFFLINE"] == ev["TRANSFORMERS_OFFLINE"] == "1"
    assert "Bearer" not in repr(env)  # the token never goes into the job's env

    # DeepSpeed's accelerator is set per trainer from use_gpu, never job-wide
    other = ClusterInfo("http://h:8265", "disabled", {})
    entry, env = job_spec(SMOKE, [], other, {"DS_ACCELERATOR": "cpu"}, verbose=True)
    assert "DS_ACCELERATOR" not in env["env_vars"]
    assert env["env_vars"]["RAY_AUTH_MODE"] == "disabled"
    assert "MLFLOW_TRACKING_URI" not in env["env_vars"]
    assert shlex.split(entry)[-1] == "--verbose"


def test_bad_config_fails_before_connecting():
    from distill.jobs import submit

    t0 = time.monotonic()
    with pytest.raises(DistillError, match="unknown key"):
        submit(SMOKE, ["no_such_key=1"], address="http://127.0.0.1:1")
    with pytest.raises(DistillError, match="not found"):
        submit(REPO / "pipelines" / "configs" / "missing.yaml", address="http://127.0.0.1:1")
    assert time.monotonic() - t0 < 10


def test_unreachable_address_is_one_clear_error():
    from distill.jobs import connect

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(DistillError, match="cannot reach the Ray dashboard"):
        connect(f"http://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 15


def test_cli_reports_unreachable_without_traceback(capsys):
    from distill.cli import main

    assert main(["status", "some-job", "--address", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill: error: cannot reach the Ray dashboard")
    assert "Traceback" not in err


def test_resolve_address():
    assert resolve_address(None, {}) == "http://127.0.0.1:8265"
    assert resolve_address(None, {"RAY_ADDRESS": "10.0.0.1:8265"}) == "http://10.0.0.1:8265"
    assert (
        resolve_address(
            None, {"RAY_ADDRESS": "http://a:1", "RAY_API_SERVER_ADDRESS": "https://b:2/"}
        )
        == "https://b:2"
    )
    assert resolve_address("http://c:3", {"RAY_ADDRESS": "http://a:1"}) == "http://c:3"
    with pytest.raises(DistillError, match="dashboard address"):
        resolve_address("ray://head:10001", {})


def test_find_token_precedence(tmp_path):
    home = tmp_path / "home"
    assert find_token({}, home) is None
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    assert find_token({}, home) == "from-home"
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    assert find_token({"RAY_AUTH_TOKEN_PATH": str(f)}, home) == "from-file"
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(f)}
    assert find_token(env, home) == "from-env"
    with pytest.raises(DistillError, match="RAY_AUTH_TOKEN_PATH"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home)


def test_parse_run_id():
    rid = "0123456789abcdef0123456789abcdef"
    logs = f"[distill] stage evaluate: done\nmlflow run: {rid}  (tracking sqlite:///x)\n"
    assert parse_run_id(logs) == rid
    assert parse_run_id("no run here") is None


def test_a_server_that_is_not_a_ray_dashboard_is_named():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from distill.jobs import connect

    class Html(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Html)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with pytest.raises(DistillError, match="is it a Ray dashboard"):
            connect(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
