"""The machine line every report and benchmark prints (distill.machine.describe)."""

from __future__ import annotations

import os
import platform

from distill import machine


def test_describe_names_cpu_count_and_architecture():
    line = machine.describe()
    assert f"{os.cpu_count()} CPUs" in line
    assert platform.machine() in line
    assert machine.cpu_model() and "?" not in machine.cpu_model()


def test_cpu_model_without_proc_cpuinfo_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "Path", lambda _: tmp_path / "missing")
    assert machine.cpu_model() == (platform.processor() or platform.machine() or "unknown CPU")
