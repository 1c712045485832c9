"""The dashboard side of ``distill submit | status | logs``: address, auth token, and Ray's
public ``JobSubmissionClient`` wrapped so every call is bounded and fails with one clear error::

    client, info = connect("http://127.0.0.1:8265")     # probes the auth mode first
    client.get_job_status("distill-smoke-1a2b3c4d")

Token authentication (Ray >= 2.52, on by default when ``~/.ray/auth_token`` exists): the
cluster's mode is read from the public ``/api/authentication_mode`` endpoint, and in ``token``
mode the token comes from ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token`` and is sent as an ``Authorization: Bearer`` header.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config.base import DistillError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0  # uploads of the working_dir go through the same session
Say = Callable[[str], None]


class RetryLater(DistillError):
    """The cluster is up but not ready to take a job yet (e.g. no job agent registered)."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the client learned from the dashboard before submitting."""

    address: str
    auth_mode: str  # "token" | "disabled"
    headers: dict[str, str] = field(default_factory=dict, repr=False)


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
