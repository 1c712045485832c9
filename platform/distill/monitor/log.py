"""The request log: every answered request as one Parquet record (route, answering model,
confidence, fallback, latency, tokens; the prompt only when enabled).

Writer (inside the Router replica) and reader (``distill monitor``)::

    log = RequestLog(RequestLogConfig(path=Path("runs/serve-log")))
    log.record("cascade", info, usage, total_ms, payload)     # the Router's accounting point
    table = read_request_log(Path("runs/serve-log"))          # all complete files, by time

A file is written whole under a hidden temp name and renamed, so a reader only ever sees complete
files; rotation starts a new file and deletes the oldest whole files beyond ``max_files``, so a
record is either still buffered or inside exactly one complete file. A file that cannot be read
(corrupt, truncated) is one ``DistillError`` naming it.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from distill.atomic import atomic_file
from distill.config.base import DistillError
from distill.monitor.config import RequestLogConfig

PREFIX = "requests-"
COLUMNS = {
    "ts": "float64",  # unix seconds when the answer was ready
    "route": "string",  # cascade | student | teacher
    "answered_by": "string",
    "confidence": "float64",  # the student's score (null: teacher pinned / student failed)
    "scoring": "string",
    "threshold": "float64",
    "fallback": "bool",
    "reason": "string",
    "latency_ms": "float64",
    "student_ms": "float64",
    "teacher_ms": "float64",
    "prompt_tokens": "int64",
    "completion_tokens": "int64",
    "prompt": "string",  # null unless include_prompts
}


def schema():
    import pyarrow as pa

    return pa.schema(
        [(k, getattr(pa, v)() if v != "bool" else pa.bool_()) for k, v in COLUMNS.items()]
    )


def make_record(
    route: str,
    info: dict[str, Any],
    usage: dict[str, Any],
    total_ms: float,
    payload: dict[str, Any] | None = None,
    include_prompt: bool = False,
) -> dict[str, Any]:
    """One log record from what the Router has when a request is answered."""
    ms = info.get("latency_ms") or {}
    prompt = None
    if include_prompt and payload is not None:
        p = payload.get("prompt")
        prompt = p if isinstance(p, str) else json.dumps(payload.get("messages", p))
    conf = info.get("confidence")
    return {
        "ts": time.time(),
        "route": route,
        "answered_by": info.get("answered_by"),
        "confidence": None if conf is None else float(conf),
        "scoring": info.get("scoring"),
        "threshold": info.get("threshold"),
        "fallback": bool(info.get("fallback", False)),
        "reason": info.get("reason"),
        "latency_ms": float(total_ms),
        "student_ms": ms.get("student"),
        "teacher_ms": ms.get("teacher"),
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "completion_tokens": int(usage.get("completion_tokens", 0)),
        "prompt": prompt,
    }


class RequestLog:
    """Buffered writer of complete Parquet files with bounded retention (thread-safe)."""

    def __init__(self, cfg: RequestLogConfig) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._buf: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._seq = 0
        self._tag = f"{socket.gethostname()[:16]}-{os.getpid()}"
        self._last_flush = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="request-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def record(
        self,
        route: str,
        info: dict[str, Any],
        usage: dict[str, Any],
        total_ms: float,
        payload: dict[str, Any] | None = None,
    ) -> None:
        rec = make_record(route, info, usage, total_ms, payload, self.cfg.include_prompts)
        with self._lock:
            self._buf.append(rec)
            full = len(self._buf) >= self.cfg.rows_per_file
        if full:
            self.flush()

    def _flusher(self) -> None:
        while not self._stop.wait(min(1.0, self.cfg.flush_interval_s)):
            if time.monotonic() - self._last_flush >= self.cfg.flush_interval_s:
                self.flush()

    def flush(self) -> Path | None:
        """Write what is buffered as complete files (≤ rows_per_file each); apply retention."""
        with self._write_lock:
            with self._lock:
                rows, self._buf = self._buf, []
            self._last_flush = time.monotonic()
            last = None
            n = self.cfg.rows_per_file
            for i in range(0, len(rows), n):
                last = self._write(rows[i : i + n])
            if last is not None:
                self._retain()
            return last

    def _write(self, rows: list[dict[str, Any]]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(rows[0]["ts"]))
        micros = int((rows[0]["ts"] % 1) * 1e6)
        name = f"{PREFIX}{stamp}.{micros:06d}-{self._tag}-{self._seq:06d}.parquet"
        path = self.dir / name
        table = pa.Table.from_pylist(rows, schema=schema())
        with atomic_file(path) as tmp:
            pq.write_table(table, tmp)
        return path

    def _retain(self) -> None:
        files = log_files(self.dir)
        for old in files[: max(0, len(files) - self.cfg.max_files)]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self.flush()


def open_request_log(cfg: RequestLogConfig | dict[str, Any] | None) -> RequestLog | None:
    """The Router's log (None when ``request_log`` is not configured)."""
    if cfg is None:
        return None
    return RequestLog(cfg if isinstance(cfg, RequestLogConfig) else RequestLogConfig(**cfg))


def log_files(path: Path) -> list[Path]:
    """Complete log files, oldest first (names start with the UTC time of their first record)."""
    return sorted(p for p in Path(path).glob(f"{PREFIX}*.parquet") if p.is_file())


def read_request_log(path: Path):
    """Every record of a log directory (or one file) as a pyarrow Table sorted by ``ts``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise DistillError(f"request log {path} does not exist")
    files = [path] if path.is_file() else log_files(path)
    if not files:
        raise DistillError(f"no request log files ({PREFIX}*.parquet) in {path}")
    tables = []
    for f in files:
        try:
            t = pq.read_table(f)
        except Exception as e:
            raise DistillError(
                f"request log file {f} is corrupt or half-written ({type(e).__name__}: {e}); "
                "move it aside to read the others"
            ) from None
        missing = [c for c in COLUMNS if c not in t.column_names]
        if missing:
            raise DistillError(f"request log file {f} is not a distill request log: no {missing}")
        tables.append(t.select(list(COLUMNS)).cast(schema()))
    table = pa.concat_tables(tables)
    return table.sort_by("ts")
