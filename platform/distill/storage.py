"""Storage locations as pyarrow filesystem URIs: local paths, ``file://``, ``s3://``, ``gs://``,
``hdfs://`` (what Ray Train's ``storage_path`` accepts)::

    distill run pipelines/configs/smoke.yaml --set distill.storage_path=s3://bucket/distill
    distill run pipelines/configs/smoke.yaml --set workdir=file:///mnt/shared/smoke

The workdir must be a filesystem every node mounts at the same path (a local disk on one
machine, a ReadWriteMany PVC on KubeRay): stages read and write plain files there. Ray Train
checkpoints (``distill.storage_path``) may also live in an object store.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from distill.config.base import DistillError

REACH_TIMEOUT_S = 30.0


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def local_path(location: str | os.PathLike) -> Path:
    """A local path for a plain path or a ``file://`` URI; anything else is an error."""
    s = str(location)
    if not is_uri(s):
        return Path(s)
    u = urlparse(s)
    if u.scheme == "file":
        return Path(u.path)
    raise DistillError(
        f"{s!r}: only a local or shared-filesystem path (or file://) can be a workdir; put "
        "Ray Train checkpoints in object storage with distill.storage_path"
    )


def normalize(location: str | os.PathLike) -> str:
    """An absolute local path (for paths and ``file://``) or the URI unchanged."""
    s = str(location)
    if not is_uri(s) or urlparse(s).scheme == "file":
        return str(local_path(s).resolve())
    return s


def filesystem(location: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for a path or URI."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(normalize(location))
    except (pafs.ArrowInvalid, ValueError, OSError) as e:  # type: ignore[attr-defined]
        raise DistillError(f"storage {location!r}: {e}") from None


def ensure_dir(location: str, timeout_s: float = REACH_TIMEOUT_S) -> str:
    """Create ``location`` if needed and check it is writable, within ``timeout_s``; returns the
    normalized location. An unreachable or refused store is one clear error, never a hang."""
    loc = normalize(location)
    fs, path = filesystem(loc)

    def probe() -> None:
        fs.create_dir(path, recursive=True)
        marker = f"{path.rstrip('/')}/.distill-write-check"
        with fs.open_output_stream(marker) as f:
            f.write(b"ok")
        fs.delete_file(marker)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(probe).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise DistillError(f"storage {loc!r} did not answer within {timeout_s:.0f}s") from None
    except Exception as e:
        raise DistillError(f"storage {loc!r} is not writable: {type(e).__name__}: {e}") from None
    finally:
        pool.shutdown(wait=False)
    return loc


def write_text(location: str, name: str, text: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path.rstrip('/')}/{name}") as f:
        f.write(text.encode())


def read_texts(location: str) -> list[str]:
    """Every file directly inside ``location`` (none when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    out = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out.append(f.read().decode())
    return out
