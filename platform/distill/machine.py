"""The one-line description of the machine that printed a figure (reports and benchmarks).

from distill.machine import describe
print(f"machine: {describe()}")   # e.g. "AMD EPYC, 2 CPUs, x86_64, Linux 6.18.44"
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows (never empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe() -> str:
    """CPU model, CPU count, architecture and OS: what a benchmark line needs to be read."""
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.machine()}, "
        f"{platform.system()} {platform.release()}"
    )
