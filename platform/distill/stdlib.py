"""Python source installed on this machine: the running interpreter's standard library (real text
on every machine, the default corpus of ``distill.data.corpus`` and the tiny tokenizer's training
text of ``distill.models.tiny``) and installed packages (the sources ``data.corpus.packages``
adds; ``evaluate.extra_corpora``'s ``package`` finds its folder with ``package_dir``)::

    files = stdlib_files()          # every *.py under the stdlib, tests excluded, sorted
    files = package_files("yaml")   # every *.py of an installed package, tests excluded, sorted
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

_EXCLUDED_PARTS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "lib2to3"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _sources(root: Path) -> list[Path]:
    """Every ``*.py`` under ``root``, tests and third-party folders excluded, sorted."""
    files = [
        p
        for p in root.rglob("*.py")
        if not (_EXCLUDED_PARTS & set(p.relative_to(root).parts)) and not p.name.startswith("test_")
    ]
    return sorted(files)


def stdlib_files() -> list[Path]:
    """Every ``*.py`` under the stdlib, tests and third-party folders excluded, sorted."""
    return _sources(stdlib_root())


def package_dir(name: str) -> Path | None:
    """Where an installed package's source lives (found with importlib, not imported); None when
    ``name`` is not an installed package (a plain module has no source folder either)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_files(name: str) -> list[Path]:
    """Every ``*.py`` of an installed package (``package_dir``), tests excluded, sorted."""
    root = package_dir(name)
    return [] if root is None else _sources(root)
