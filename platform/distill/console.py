"""The console of ``distill run``: distill's own lines and a live progress bar per long step on the
terminal; every third-party log line, warning and print (GPT-QModel, MLflow, transformers,
torch, Ray core, subprocesses) in ``<workdir>/logs/distill.log`` unless verbose::

    with quiet_output(log_file, verbose=False) as console:
        console.say("[distill] stage distill: running")
        with console.progress.task("distill", total=64, unit="steps") as bar:
            bar.update(12, loss=1.23, tok_s=190.0)

Quiet means the process' stdout and stderr file descriptors point at the log file for the whole
run, so nothing written below Python (C++ logging of Ray, a child process' output) can reach the
terminal either; distill writes to a duplicate of the terminal taken before. On a terminal the
bars redraw in place (rich); elsewhere (CI logs, pipes) a bar prints a plain line at most every
``PLAIN_EVERY_S`` seconds and when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

PLAIN_EVERY_S = 30.0


def _eta(done: float, total: float, elapsed: float) -> str:
    if done <= 0 or total <= done:
        return "—"
    left = elapsed * (total - done) / done
    return f"{int(left // 60)}m{int(left % 60):02d}s"


def _fields(fields: dict[str, Any]) -> str:
    out = []
    for k, v in fields.items():
        out.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(out)


class Task:
    """One progress bar: ``update(completed, **fields)`` from any thread."""

    def __init__(self, owner: Progress, description: str, total: float, unit: str) -> None:
        self.owner, self.description, self.total, self.unit = owner, description, total, unit
        self.completed = 0.0
        self.fields: dict[str, Any] = {}
        self.start = time.monotonic()
        self._last_plain = self.start
        self._rich_id: Any = None

    def update(self, completed: float | None = None, **fields: Any) -> None:
        if completed is not None:
            self.completed = float(completed)
        self.fields.update(fields)
        self.owner._render(self)

    def advance(self, n: float = 1.0, **fields: Any) -> None:
        self.update(self.completed + n, **fields)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = f"{self.completed:.0f}/{self.total:.0f} {self.unit}"
        extra = _fields(self.fields)
        eta = _eta(self.completed, self.total, elapsed)
        return (
            f"[distill]   {self.description}: {done}"
            + (f", {extra}" if extra else "")
            + (f", ETA {eta}" if eta != "—" else f", {elapsed:.0f}s")
        )


class Progress:
    """Progress bars on ``stream``: live (rich) on a terminal, periodic plain lines elsewhere;
    ``Progress(None)`` draws nothing (tests, library callers)."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._live: Any = None
        if stream is not None and stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._live = RichProgress(
                TextColumn("[distill]   {task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f} {task.fields[unit]}"),
                TextColumn("{task.fields[extra]}"),
                TimeRemainingColumn(),
                console=Console(file=stream),
                transient=False,
            )

    @contextmanager
    def task(self, description: str, total: float, unit: str = "") -> Iterator[Task]:
        t = Task(self, description, max(float(total), 1.0), unit)
        if self._live is not None:
            with self._lock:
                if not self._live.tasks:
                    self._live.start()
                t._rich_id = self._live.add_task(description, total=t.total, unit=unit, extra="")
        try:
            yield t
        finally:
            self._finish(t)

    def _render(self, t: Task) -> None:
        if self.stream is None:
            return
        with self._lock:
            if self._live is not None:
                self._live.update(t._rich_id, completed=t.completed, extra=_fields(t.fields))
                return
            now = time.monotonic()
            if now - t._last_plain >= PLAIN_EVERY_S:
                t._last_plain = now
                self.stream.write(t.line() + "\n")
                self.stream.flush()

    def _finish(self, t: Task) -> None:
        if self.stream is None:
            return
        with self._lock:
            if self._live is not None:
                self._live.update(t._rich_id, completed=t.completed, extra=_fields(t.fields))
                self._live.remove_task(t._rich_id)
                if not self._live.tasks:
                    self._live.stop()
                return
            self.stream.write(t.line() + "\n")
            self.stream.flush()


@contextmanager
def polling(task: Task, read: Callable[[], tuple[float, dict[str, Any]] | None], every_s: float):
    """Update ``task`` from ``read()`` (completed, fields) every ``every_s`` seconds in a thread
    while the body runs, and once at the end: progress of work that runs in Ray workers, read
    from what they write (shards on disk, metrics in MLflow). A failed read skips one update."""
    stop = threading.Event()

    def update() -> None:
        try:
            got = read()
        except Exception:  # noqa: BLE001 (progress must never fail the stage)
            return
        if got is not None:
            task.update(got[0], **got[1])

    def loop() -> None:
        while not stop.wait(every_s):
            update()

    th = threading.Thread(target=loop, name="distill-progress", daemon=True)
    th.start()
    try:
        yield task
    finally:
        stop.set()
        th.join(timeout=every_s + 5)
        update()


class Console:
    """Where distill speaks: ``say`` (a line, also logged) and ``progress`` (bars)."""

    def __init__(self, stream: TextIO | None, log: logging.Logger | None = None) -> None:
        self.stream = stream
        self.progress = Progress(stream)
        self._log = log

    def say(self, msg: str) -> None:
        if self.stream is not None:
            self.stream.write(msg + "\n")
            self.stream.flush()
        if self._log is not None:
            self._log.info(msg)


@contextmanager
def quiet_output(log_file: Path, verbose: bool = False) -> Iterator[Console]:
    """The run's console. Quiet (not ``verbose``): file descriptors 1 and 2 point at
    ``log_file`` until the block ends, Python warnings become log records, and the returned
    console writes to the terminal. Verbose: nothing is redirected."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("distill.run")
    if verbose:
        yield Console(sys.stdout, log)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.captureWarnings(True)
    # Python-level writers too, whatever object sys.stdout / sys.stderr is (a notebook, pytest)
    sink = open(log_file, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("default")
            yield Console(terminal, log)
    finally:
        sink.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        logging.captureWarnings(False)
        terminal.close()
