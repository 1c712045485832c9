"""Extra held-out corpora (``evaluate.extra_corpora``): read with the corpus readers of
``distill.data`` (text dirs, JSONL, Parquet on Ray Data), tokenized with the teacher's tokenizer,
packed to ``data.seq_len`` and scored like the held-out split::

    evaluate:
      extra_corpora:
        - {name: ood-python, paths: [/data/other_python], max_rows: 32}
        - {name: docs, paths: [/data/docs.jsonl], text_field: body}

A missing path, an empty corpus or one too short for a single row is one ``DistillError`` naming
``evaluate.extra_corpora[<i>]``; ``check_extra_corpora`` runs before the pipeline starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill.config.base import DistillError
from distill.data.config import CorpusConfig, DataConfig
from distill.data.corpus import installed_package_dir, resolve_files
from distill.data.packing import pack
from distill.data.pipeline import read_documents
from distill.data.plan import order_key
from distill.eval.config import ExtraCorpus


def _where(i: int, ec: ExtraCorpus) -> str:
    return f"evaluate.extra_corpora[{i}] ({ec.name})"


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    for dist in packages_distributions().get(name, [name]):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def corpus_config(ec: ExtraCorpus) -> CorpusConfig:
    return CorpusConfig(
        kind="files",
        paths=[installed_package_dir(ec.package, "package")] if ec.package else ec.paths,
        format=ec.format,
        text_field=ec.text_field,
        glob=ec.glob or ("**/*.py" if ec.package else "**/*"),
        max_documents=ec.max_documents,
    )


def describe(ec: ExtraCorpus) -> dict[str, Any]:
    """What ``report.json`` says of an extra corpus besides its rows: paths, package version."""
    cfg = corpus_config(ec)
    out: dict[str, Any] = {"paths": [str(p) for p in cfg.paths]}
    if ec.package:
        out.update(package=ec.package, version=package_version(ec.package))
    return out


def extra_files(i: int, ec: ExtraCorpus) -> list[Path]:
    """The corpus files (``distill.data.corpus.resolve_files``), errors re-labelled."""

    try:
        return resolve_files(corpus_config(ec))
    except DistillError as e:
        msg = str(e).replace("data.corpus.paths", "paths").replace("data.corpus.", "")
        raise DistillError(f"{_where(i, ec)}: {msg}") from None


def check_extra_corpora(corpora: list[ExtraCorpus]) -> None:
    """Fail fast (before any stage) on a missing or empty extra corpus."""
    for i, ec in enumerate(corpora):
        extra_files(i, ec)


def read_texts(i: int, ec: ExtraCorpus, seq_len: int) -> list[str]:
    """The corpus' documents (Ray Data readers of ``distill.data``), each cut to
    ``max_doc_chars``, in a seeded hash order of their ids: any head of the packed rows samples
    many documents (in path order, 32 rows of ``rich`` were two small files and half of a
    table of numbers)."""

    files = extra_files(i, ec)
    cfg = DataConfig(corpus=corpus_config(ec), seq_len=seq_len)
    try:
        docs: list[dict[str, Any]] = read_documents(cfg, files).take_all()
    except DistillError as e:
        raise DistillError(f"{_where(i, ec)}: {e}") from None
    docs.sort(key=lambda d: order_key(str(d["doc_id"]), seed=0))
    return [str(d["text"])[: ec.max_doc_chars] for d in docs]


def extra_corpus_rows(i: int, ec: ExtraCorpus, tok: Any, seq_len: int) -> np.ndarray:
    """``[n ≤ max_rows, seq_len]`` token rows of one extra corpus."""

    texts = [t for t in read_texts(i, ec, seq_len) if t.strip()]
    if not texts:
        raise DistillError(f"{_where(i, ec)}: the corpus is empty (no document has text)")
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    rows = pack(ids, seq_len, tok.eos_token_id, ec.max_rows)
    if len(rows) == 0:
        n = sum(len(x) for x in ids)
        raise DistillError(
            f"{_where(i, ec)}: {n} tokens, fewer than one row of data.seq_len={seq_len}"
        )
    return rows


def load_extra_corpora(corpora: list[ExtraCorpus], tok: Any, seq_len: int) -> dict[str, np.ndarray]:
    return {ec.name: extra_corpus_rows(i, ec, tok, seq_len) for i, ec in enumerate(corpora)}
