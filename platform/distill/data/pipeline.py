"""Ray Data: read the corpus → tokenize (teacher's tokenizer) → split by document → pack.

``prepare_corpus(cfg, tokenizer_dir, out_dir)`` is what ``distill run`` calls before any stage;
a rerun with the same corpus, tokenizer and packing settings reuses ``out_dir``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from distill.config.base import DistillError
from distill.data.config import DataConfig
from distill.data.corpus import detect_format, fingerprint, is_heldout, resolve_files
from distill.data.packed import PackedCorpus, write_rows
from distill.data.packing import pack


class Tokenize:
    """Callable class for ``map_batches``: one tokenizer per actor."""

    def __init__(self, tokenizer_dir: str, max_chars: int) -> None:
        from distill.models.loader import load_tokenizer

        self.tok = load_tokenizer(Path(tokenizer_dir))
        self.max_chars = max_chars

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t)[: self.max_chars] for t in batch["text"]]
        ids = self.tok(texts, add_special_tokens=False)["input_ids"]
        return {
            "doc_id": batch["doc_id"],
            "input_ids": [np.asarray(x, dtype=np.int32) for x in ids],
        }


def _read(cfg: DataConfig, files: list[Path]):
    """A Ray Dataset with columns ``doc_id`` and ``text``: one row per document."""
    import ray.data

    fmt = detect_format(cfg.corpus, files)
    paths = [str(f) for f in files]
    field = cfg.corpus.text_field
    if fmt == "text":
        ds = ray.data.read_binary_files(paths, include_paths=True)

        def to_doc(row: dict[str, Any]) -> dict[str, Any]:
            return {"doc_id": row["path"], "text": row["bytes"].decode("utf-8", errors="replace")}

        return ds.map(to_doc)
    ds = ray.data.read_json(paths, lines=True) if fmt == "jsonl" else ray.data.read_parquet(paths)
    if field not in ds.schema().names:
        raise DistillError(
            f"data.corpus.text_field {field!r} is not a column of the corpus "
            f"(columns: {ds.schema().names})"
        )

    def to_row(row: dict[str, Any]) -> dict[str, Any]:
        text = str(row[field] or "")
        return {"doc_id": hashlib.sha256(text.encode()).hexdigest(), "text": text}

    ds = ds.map(to_row)
    if cfg.corpus.max_documents:
        ds = ds.limit(cfg.corpus.max_documents)
    return ds


def prepare_corpus(cfg: DataConfig, tokenizer_dir: Path, out_dir: Path) -> PackedCorpus:
    """Tokenize and pack the corpus into ``out_dir`` (reused when its fingerprint matches)."""
    from ray.data import ActorPoolStrategy

    from distill.models.hashing import tokenizer_sha256
    from distill.models.loader import load_tokenizer

    files = resolve_files(cfg.corpus)
    key = hashlib.sha256(
        json.dumps(
            {
                "corpus": fingerprint(cfg.corpus, files),
                "tokenizer": tokenizer_sha256(tokenizer_dir),
                "data": cfg.model_dump(mode="json"),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("fingerprint") == key:
        return PackedCorpus.open(out_dir)

    ds = _read(cfg, files).map_batches(
        Tokenize,
        fn_constructor_args=(str(tokenizer_dir), cfg.corpus.max_doc_chars),
        batch_size=cfg.tokenize_batch_size,
        compute=ActorPoolStrategy(size=1),
        num_cpus=0.5,
    )
    docs = sorted(ds.take_all(), key=lambda r: r["doc_id"])
    docs = [d for d in docs if len(d["input_ids"])]
    if not docs:
        raise DistillError("the corpus is empty: no document produced any token")
    held = [d for d in docs if is_heldout(d["doc_id"], cfg.heldout_fraction, cfg.seed)]
    if not held:  # tiny corpora: still hold out one document
        held = [docs[-1]]
    held_ids = {d["doc_id"] for d in held}
    train = [d for d in docs if d["doc_id"] not in held_ids]
    if not train:
        raise DistillError(f"the corpus has {len(docs)} document(s): too few to split")
    eos = load_tokenizer(tokenizer_dir).eos_token_id
    train_rows = pack((d["input_ids"] for d in train), cfg.seq_len, eos, cfg.max_train_rows)
    held_rows = pack((d["input_ids"] for d in held), cfg.seq_len, eos, cfg.max_heldout_rows)
    if len(train_rows) == 0 or len(held_rows) == 0:
        raise DistillError(
            f"the corpus is too small for seq_len {cfg.seq_len}: {len(train_rows)} train and "
            f"{len(held_rows)} held-out rows"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    write_rows(tmp / "train.parquet", train_rows)
    write_rows(tmp / "heldout.parquet", held_rows)
    meta = {
        "fingerprint": key,
        "seq_len": cfg.seq_len,
        "train_rows": len(train_rows),
        "heldout_rows": len(held_rows),
        "train_documents": len(train),
        "heldout_documents": len(held),
        "heldout_doc_ids": sorted(held_ids),
        "train_tokens": int(train_rows.size),
        "heldout_tokens": int(held_rows.size),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return PackedCorpus.open(out_dir)
