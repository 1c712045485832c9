"""Corpus discovery: which documents exist, their ids, and a cheap fingerprint.

The default corpus is the running interpreter's standard library source (real text on every
machine), with test folders excluded; ``data.corpus.packages`` mixes installed packages' sources
in. A document is a file (text corpora) or a row (JSONL/Parquet). A document's id is stable across
machines and venvs: a file's path relative to the corpus root (the stdlib root, or the common
folder of ``data.corpus.paths``), ``site-packages/<package>/<path>`` for a package's file, a row's
content sha256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from distill.config.base import DistillError
from distill.data.config import CorpusConfig
from distill.stdlib import package_dir, package_files, stdlib_files, stdlib_root


def _stable_key(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def resolve_files(cfg: CorpusConfig) -> list[Path]:
    """The corpus files, in a deterministic order (by hash of their relative path)."""
    if cfg.kind == "stdlib":
        root = stdlib_root()
        files = stdlib_files()
        files.sort(key=lambda p: _stable_key(str(p.relative_to(root))))
    else:
        if not cfg.paths:
            raise DistillError("data.corpus.paths is empty (kind: files needs at least one path)")
        files = []
        for p in cfg.paths:
            p = Path(p)
            if p.is_dir():
                files.extend(sorted(f for f in p.glob(cfg.glob) if f.is_file()))
            elif p.is_file():
                files.append(p)
            else:
                raise DistillError(f"data.corpus.paths: {p} does not exist")
    if cfg.packages:
        files.extend(_package_files(cfg))
        ids = document_ids(cfg, files)
        files.sort(key=lambda p: _stable_key(ids[str(p)]))
    if cfg.max_documents and detect_format(cfg, files) == "text":
        files = files[: cfg.max_documents]
    if not files:
        raise DistillError(f"the corpus is empty: no files found for {cfg.kind} {cfg.paths}")
    empty = [f for f in files if f.stat().st_size == 0]
    if len(empty) == len(files):
        raise DistillError(f"the corpus is empty: all {len(files)} files have no content")
    return files


def installed_package_dir(name: str, what: str) -> Path:
    """``package_dir(name)``, or one ``DistillError`` that starts with ``what`` asked for it."""
    found = package_dir(name)
    if found is None:
        raise DistillError(
            f"{what} {name!r} is not an installed Python package here (pip install {name})"
        )
    return found


def _package_files(cfg: CorpusConfig) -> list[Path]:
    out: list[Path] = []
    for name in cfg.packages:
        installed_package_dir(name, "data.corpus.packages:")
        files = package_files(name)
        if not files:
            raise DistillError(f"data.corpus.packages: {name!r} has no Python source files")
        out.extend(files)
    return out


def corpus_root(cfg: CorpusConfig, files: list[Path]) -> Path:
    """The folder document ids are relative to: the stdlib root, else the common folder of the
    configured paths (a configured file counts as its folder)."""
    if cfg.kind == "stdlib":
        return stdlib_root()
    dirs = [os.path.abspath(p if Path(p).is_dir() else Path(p).parent) for p in cfg.paths]
    return Path(os.path.commonpath(dirs)) if dirs else Path("/")


IdRoots = list[tuple[str, str]]


def id_roots(cfg: CorpusConfig, files: list[Path]) -> IdRoots:
    """``(folder, prefix)`` pairs, each package's first, then ``corpus_root``: a text document's
    id is the prefix plus its path relative to the first folder that holds it."""
    pkgs = [
        (os.path.abspath(Path(d).parent), "site-packages/")
        for d in map(package_dir, cfg.packages)
        if d is not None
    ]
    return [*pkgs, (os.path.abspath(corpus_root(cfg, files)), "")]


def document_id(path: str | Path, roots: IdRoots) -> str:
    """A text document's id (see ``id_roots``), in POSIX form."""
    path = os.path.abspath(path)
    for root, prefix in roots:
        if path.startswith(root.rstrip(os.sep) + os.sep):
            return prefix + Path(os.path.relpath(path, root)).as_posix()
    root, prefix = roots[-1]
    return prefix + Path(os.path.relpath(path, root)).as_posix()


def document_ids(cfg: CorpusConfig, files: list[Path]) -> dict[str, str]:
    """``{str(path): doc id}`` for text corpora (``document_id``)."""
    roots = id_roots(cfg, files)
    return {str(f): document_id(f, roots) for f in files}


def detect_format(cfg: CorpusConfig, files: list[Path]) -> str:
    if cfg.format != "auto":
        return cfg.format
    suffixes = {f.suffix.lower() for f in files}
    if suffixes <= {".jsonl", ".json"}:
        return "jsonl"
    if suffixes <= {".parquet"}:
        return "parquet"
    return "text"


def fingerprint(cfg: CorpusConfig, files: list[Path]) -> str:
    """sha256 over the corpus config and each file's name, size and mtime (cheap, no reads)."""
    h = hashlib.sha256(cfg.model_dump_json().encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def is_heldout(doc_id: str, fraction: float, seed: int) -> bool:
    """Deterministic split by document: the same document always lands on the same side."""
    v = int(_stable_key(f"{seed}:{doc_id}")[:8], 16) / 0xFFFFFFFF
    return v < fraction
