"""Load helpers of ``benchmarks/serve_load.py``: result rows, and streamed completions over raw
HTTP on loopback (one thread per concurrent client).

Not a library module: ``serve_load.py`` imports it from this folder.
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def decode_rates(results: list[dict]) -> list[float]:
    """Each answer's decode speed after its first token: (tokens - 1) / (latency - TTFT)."""
    out = []
    for r in results:
        n, ttft = r.get("tokens", 0), r.get("ttft")
        if n > 1 and ttft is not None and r["latency"] > ttft:
            out.append((n - 1) / (r["latency"] - ttft))
    return out


def pct(xs: list[float], q: float) -> float | None:
    from distill.serve.stats import percentile

    return percentile(xs, q)


def row(name: str, c: int, results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r.get("status") == 200]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r.get("ttft") is not None]
    toks = sum(r["tokens"] for r in ok)
    fb = [r["fallback"] for r in ok if r.get("fallback") is not None]
    codes: dict[str, int] = {}
    for r in results:
        if r.get("status") != 200:
            codes[str(r.get("status"))] = codes.get(str(r.get("status")), 0) + 1
    return {
        "name": name,
        "concurrency": c,
        "requests": len(results),
        "errors": codes,
        "tok_s": toks / wall if wall else 0.0,
        "req_s": len(ok) / wall if wall else 0.0,
        "p50_s": pct(lat, 50),
        "p99_s": pct(lat, 99),
        "ttft_p50_s": pct(ttft, 50),
        "decode_tok_s_p50": pct(decode_rates(ok), 50),
        "fallback": sum(fb) / len(fb) if fb else None,
        "texts": [r.get("text", "") for r in ok],
    }


# -- HTTP ------------------------------------------------------------------------------------------
def http_request(port: int, body: dict, timeout: float = 600, prefix: str = "") -> dict:
    """One streamed completion over raw HTTP; returns status, latency, TTFT, tokens, text."""
    import http.client

    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", f"{prefix}/v1/completions", json.dumps(body),
                     {"content-type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        if resp.status != 200:
            body_text = resp.read().decode(errors="replace")
            return {"status": resp.status, "latency": time.perf_counter() - t0,
                    "message": body_text[:200]}  # fmt: skip
        ttft, text, usage, info = None, "", {}, {}
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                return {
                    "status": ev["error"].get("code") or 500,
                    "latency": time.perf_counter() - t0,
                    "message": str(ev["error"].get("message", ""))[:200],
                }
            for ch in ev.get("choices", []):
                if ch.get("text") and ttft is None:
                    ttft = time.perf_counter() - t0
                text += ch.get("text") or ""
            usage = ev.get("usage") or usage
            info = ev.get("distill") or info
        return {
            "status": 200, "latency": time.perf_counter() - t0, "ttft": ttft, "text": text,
            "tokens": usage.get("completion_tokens", 0), "fallback": info.get("fallback"),
            "speculative": info.get("speculative"),
        }  # fmt: skip
    except Exception as e:
        return {"status": f"{type(e).__name__}", "latency": time.perf_counter() - t0}
    finally:
        conn.close()


def wave(port, model, texts, c, max_tokens, distill=None, prefix="") -> tuple[list[dict], float]:
    """``texts`` as streamed completions, ``c`` at a time: (results, wall seconds)."""

    def one(p: str) -> dict:
        body = {"model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        if distill:
            body["distill"] = distill
        return http_request(port, body, prefix=prefix)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        results = list(pool.map(one, texts))
    return results, time.perf_counter() - t0


def run_http(port, name, model, texts, c, max_tokens, distill=None, prefix="") -> dict:
    return row(name, c, *wave(port, model, texts, c, max_tokens, distill, prefix))


def run_ab(arms: list[tuple[str, Callable]], texts, c, rounds) -> list[dict]:
    """Waves of the same requests on each arm ``(name, wave_fn(texts, c) -> (results, wall))``,
    ``rounds`` times, the order alternating (A B C, C B A, ...) so the drift of a shared box hits
    the arms alike. One row per arm over all its waves, each wave's tok/s in ``rounds_tok_s``."""
    got: dict[str, tuple[list[dict], list[float], list[float]]] = {a[0]: ([], [], []) for a in arms}
    for r in range(rounds):
        for name, wave_fn in arms if r % 2 == 0 else arms[::-1]:
            results, wall = wave_fn(texts, c)
            res, walls, rates = got[name]
            res += results
            walls.append(wall)
            rates.append(row(name, c, results, wall)["tok_s"])
    out = []
    for name, (res, walls, rates) in got.items():
        out.append({**row(name, c, res, sum(walls)), "rounds_tok_s": rates})
    return out


def run_overload(port: int, model: str, burst: int) -> dict:
    """``burst`` long requests at once: admitted ones are cut short, refused ones timed."""
    body = {"model": model, "prompt": "def main():", "max_tokens": 256, "stream": True}
    with ThreadPoolExecutor(burst) as pool:
        results = list(pool.map(lambda _: http_request(port, body, timeout=120), range(burst)))
    refused = [r["latency"] for r in results if r["status"] == 503]
    by_source: dict[str, list[float]] = {}
    for r in results:
        if r["status"] == 503:
            by_source.setdefault(refusal_source(r.get("message", "")), []).append(r["latency"])
    return {
        "name": "overload burst", "concurrency": burst, "requests": burst,
        "refused_503": len(refused), "refused_p99_s": pct(refused, 99),
        "refused_by": {k: {"n": len(v), "p50_s": pct(v, 50), "p99_s": pct(v, 99)}
                       for k, v in sorted(by_source.items())},
        "other_errors": [r["status"] for r in results if r["status"] not in (200, 503)],
    }  # fmt: skip


def refusal_source(message: str) -> str:
    """Who answered a 503: Serve's queue (before the Router), the Router, or a model replica."""
    if "server at capacity" in message:
        return "router"
    if "is at capacity" in message or "batch slot" in message:
        return "replica"
    return "serve queue"


def similarity(a: list[str], b: list[str]) -> tuple[float, float]:
    """(exact-match rate, mean difflib ratio) of paired answers."""
    pairs = list(zip(a, b, strict=False))
    if not pairs:
        return float("nan"), float("nan")
    exact = sum(x == y for x, y in pairs) / len(pairs)
    ratio = sum(difflib.SequenceMatcher(None, x, y).ratio() for x, y in pairs) / len(pairs)
    return exact, ratio
