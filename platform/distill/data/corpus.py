"""Corpus discovery: which documents exist, their ids, and a cheap fingerprint.

The default corpus is the running interpreter's standard library source (real text on every
machine), with test folders excluded. A document is a file (text corpora) or a row (JSONL/Parquet).
A document's id is stable across machines and venvs: a file's path relative to the corpus root
(the stdlib root, or the common folder of ``data.corpus.paths``), a row's content sha256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from distill.config.base import DistillError
from distill.data.config import CorpusConfig
from distill.stdlib import stdlib_files, stdlib_root


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
    if cfg.max_documents and detect_format(cfg, files) == "text":
        files = files[: cfg.max_documents]
    if not files:
        raise DistillError(f"the corpus is empty: no files found for {cfg.kind} {cfg.paths}")
    empty = [f for f in files if f.stat().st_size == 0]
    if len(empty) == len(files):
        raise DistillError(f"the corpus is empty: all {len(files)} files have no content")
    return files


def corpus_root(cfg: CorpusConfig, files: list[Path]) -> Path:
    """The folder document ids are relative to: the stdlib root, else the common folder of the
    configured paths (a configured file counts as its folder)."""
    if cfg.kind == "stdlib":
        return stdlib_root()
    dirs = [os.path.abspath(p if Path(p).is_dir() else Path(p).parent) for p in cfg.paths]
    return Path(os.path.commonpath(dirs)) if dirs else Path("/")


def document_id(path: str | Path, root: str | Path) -> str:
    """A text document's id: its path relative to ``root`` (absolute), in POSIX form."""
    return Path(os.path.relpath(os.path.abspath(path), root)).as_posix()


def document_ids(cfg: CorpusConfig, files: list[Path]) -> dict[str, str]:
    """``{str(path): doc id}`` for text corpora: the path relative to ``corpus_root`` (POSIX)."""
    root = os.path.abspath(corpus_root(cfg, files))
    return {str(f): document_id(f, root) for f in files}


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
