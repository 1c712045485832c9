"""The running interpreter's standard-library source: real text on every machine, the default
corpus (``distill.data.corpus``) and the tiny tokenizer's training text (``distill.models.tiny``)::

    files = stdlib_files()          # every *.py under the stdlib, tests excluded, sorted
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

_EXCLUDED_PARTS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "lib2to3"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Every ``*.py`` under the stdlib, tests and third-party folders excluded, sorted."""
    root = stdlib_root()
    files = [
        p
        for p in root.rglob("*.py")
        if not (_EXCLUDED_PARTS & set(p.relative_to(root).parts)) and not p.name.startswith("test_")
    ]
    return sorted(files)
