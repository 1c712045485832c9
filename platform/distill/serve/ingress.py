"""Where HTTP clients can reach an app: Serve's proxy, or the Router replicas directly.

In Ray Serve's high-throughput mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``, which ``distill
serve`` sets) each ingress replica (the Router) also serves HTTP on a port of its own
("direct ingress", 30000-31000 by default), bound to the same host as the proxy. A client that
connects there skips the proxy actor's hop. ``distill serve deploy/serve.yaml`` prints both::

    serving http://127.0.0.1:8000  (OpenAI base URL: http://127.0.0.1:8000/v1)
    direct to the Router replicas (no proxy hop): http://127.0.0.1:30000/v1

Going direct saves the proxy actor's CPU time and hop (``benchmarks/serve_load.py``; the
figures are in docs/serving.md). In a cluster, Ray's HAProxy ingress
(``RAY_SERVE_ENABLE_HA_PROXY=1``) is what sends traffic to these ports.
"""

from __future__ import annotations

from typing import Any


def direct_ingress_urls(app_name: str, host: str, proxy_port: int) -> list[str]:
    """``http://HOST:PORT`` of each running Router replica of ``app_name`` that serves HTTP
    itself; empty when direct ingress is off (outside the high-throughput mode) or Serve does
    not report it. ``host`` / ``proxy_port``: what Serve was started with (the replicas bind
    to that host; an app without running replicas is listed at the proxy's port instead)."""
    details = _serve_details()
    urls = []
    for group in details.get("target_groups") or []:
        protocol = str(group.get("protocol", "")).upper()
        if group.get("app_name") != app_name or not protocol.endswith("HTTP"):
            continue
        for target in group.get("targets") or []:
            port = int(target.get("port") or 0)
            if port and port != proxy_port:
                urls.append(f"http://{host}:{port}")
    return urls


def _serve_details() -> dict[str, Any]:
    """Serve's instance details (the schema of ``GET /api/serve/applications/``)."""
    from ray.serve.context import _get_global_client

    try:
        return dict(_get_global_client().get_serve_details())
    except Exception:  # noqa: BLE001 (no Serve running, or an older Ray: no direct URLs)
        return {}
