"""Helpers for the tests that start their own Ray nodes (``test_two_node_cluster.py``,
``test_submit_cluster.py``): free loopback ports and ending a node's process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def end_group(*procs: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM the process groups ``procs`` lead, all at once; SIGKILL what is left after
    ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        live = []
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
                live.append(proc)
            except ProcessLookupError:
                proc.poll()
        deadline = time.monotonic() + wait_s
        while live and time.monotonic() < deadline:
            time.sleep(0.2)
            for proc in list(live):
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    proc.wait(timeout=5)
                    live.remove(proc)
                else:
                    proc.poll()
        procs = tuple(live)
        if not procs:
            return
