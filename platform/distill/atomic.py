"""Outputs appear whole or not at all: a writer fills a temp name beside the output, which is
renamed into place when the writer is done (the old output replaced) and removed if it fails,
so a crash or an interrupted run never leaves a half-written checkpoint, corpus or report::

    with atomic_dir(Path("runs/x/student")) as tmp:
        model.save_pretrained(tmp)
    with atomic_file(Path("runs/x/report.json")) as tmp:  # .report.json.<pid>.tmp
        tmp.write_text(json.dumps(report))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A fresh temp folder beside ``out``; it becomes ``out`` when the block ends."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp made it 0700; the output is an ordinary folder
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temp file name beside ``path``; it becomes ``path`` when the block ends. The name ends
    in ``.tmp``, so a reader globbing ``*.parquet`` never sees a half-written file (a writer
    that infers the format from the suffix, like ``savefig``, is given it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
