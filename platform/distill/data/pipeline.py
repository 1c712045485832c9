"""Ray Data end to end: read → tokenize (actor pool) → split by document → pack → write Parquet.

``prepare_corpus(cfg, tokenizer_dir, out_dir)`` is what ``distill run`` calls before any stage;
a rerun with the same corpus, tokenizer and packing settings reuses ``out_dir``::

    distill run pipelines/configs/smollm2.yaml      # "[distill] preparing corpus ..."

1. Ray Data reads the documents, tokenizes them on an actor pool sized from the cluster and writes
   tokens + MinHash signatures to a temporary Parquet dataset;
2. the driver reads only ids, token counts and signatures, and plans the split (near-duplicate
   clusters never straddle it), a seeded document order and packing groups (``distill.data.plan``);
3. Ray Data packs each group with numpy (``map_groups``) and writes the rows through
   ``PackedRowsDatasink`` as ``train.parquet/rows-<first row>.parquet`` (same for held-out).

The driver never holds texts or tokens: its memory does not grow with the corpus
(``benchmarks/corpus_scale.py`` measures it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import atomic_dir
from distill.config.base import DistillError
from distill.data.config import DataConfig
from distill.data.corpus import (
    IdRoots,
    detect_format,
    document_id,
    fingerprint,
    id_roots,
    resolve_files,
)
from distill.data.dedup import token_signature
from distill.data.packed import PackedCorpus, check_parts
from distill.data.packing import pack_concat
from distill.data.plan import HELDOUT, SPLITS, TRAIN, Plan, make_plan
from distill.data.sink import PackedRowsDatasink
from distill.models.hashing import tokenizer_sha256
from distill.models.loader import load_tokenizer

DOC_COLUMNS = ("doc_id", "n_tokens", "sig")


class Tokenize:
    """Callable class for ``map_batches``: one tokenizer per actor; tokens + MinHash signature."""

    def __init__(self, tokenizer_dir: str, max_chars: int, shingle: int, num_perm: int) -> None:
        self.tok = load_tokenizer(Path(tokenizer_dir))
        self.max_chars, self.shingle, self.num_perm = max_chars, shingle, num_perm

    def __call__(self, batch: dict[str, Any]):
        import pyarrow as pa

        texts = [str(t)[: self.max_chars] for t in batch["text"]]
        ids = [
            np.asarray(x, dtype=np.int32)
            for x in self.tok(texts, add_special_tokens=False)["input_ids"]
        ]
        sigs = np.zeros((len(ids), self.num_perm), dtype=np.uint64)
        for i, a in enumerate(ids):
            sigs[i] = token_signature(a, self.shingle, self.num_perm)
        return pa.table(
            {
                "doc_id": pa.array([str(d) for d in batch["doc_id"]], pa.string()),
                "n_tokens": pa.array([len(a) for a in ids], pa.int64()),
                "sig": pa.FixedSizeListArray.from_arrays(pa.array(sigs.reshape(-1)), self.num_perm),
                "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
            }
        )


def _text_docs(batch: dict[str, Any], roots: IdRoots) -> dict[str, Any]:
    """Binary files → ``doc_id`` (``document_id``: the path relative to the corpus root) and
    decoded ``text``. Only the roots travel with the task, not a ``{path: id}`` map of the
    whole corpus."""
    return {
        "doc_id": [document_id(str(p), roots) for p in batch["path"]],
        "text": [b.decode("utf-8", errors="replace") for b in batch["bytes"]],
    }


def _row_docs(batch: dict[str, Any], field: str) -> dict[str, Any]:
    """JSONL / Parquet rows → ``doc_id`` (content sha256) and ``text``."""
    texts = ["" if t is None else str(t) for t in batch[field]]
    return {"doc_id": [hashlib.sha256(t.encode()).hexdigest() for t in texts], "text": texts}


# Reads and light maps take half a CPU: beside tokenizer actors (0.5 CPU each, spread over the
# nodes) a whole-CPU task may never find a free CPU on a cluster of small nodes.
READ_CPUS = 0.5


def read_documents(cfg: DataConfig, files: list[Path]):
    """A Ray Dataset with columns ``doc_id`` and ``text``: one row per document."""
    import ray.data

    fmt = detect_format(cfg.corpus, files)
    paths = [str(f) for f in files]
    if fmt == "text":
        ds = ray.data.read_binary_files(paths, include_paths=True, num_cpus=READ_CPUS)
        roots = id_roots(cfg.corpus, files)
        return ds.map_batches(_text_docs, fn_kwargs={"roots": roots}, num_cpus=READ_CPUS)
    if fmt == "jsonl":
        ds = ray.data.read_json(paths, lines=True, num_cpus=READ_CPUS)
    else:
        ds = ray.data.read_parquet(paths, num_cpus=READ_CPUS)
    field = cfg.corpus.text_field
    if field not in ds.schema().names:
        raise DistillError(
            f"data.corpus.text_field {field!r} is not a column of the corpus "
            f"(columns: {ds.schema().names})"
        )
    ds = ds.map_batches(
        _row_docs, fn_kwargs={"field": field}, batch_format="numpy", num_cpus=READ_CPUS
    )
    if cfg.corpus.max_documents:
        ds = ds.limit(cfg.corpus.max_documents)
    return ds


def tokenizer_pool_size(cfg: DataConfig) -> int:
    """``data.tokenize_actors``, else one actor (0.5 CPU) per 2 cluster CPUs: a quarter of the
    CPUs tokenize and the rest read, so reads never starve (on a 2-CPU cluster: one actor)."""
    import ray

    if cfg.tokenize_actors:
        return cfg.tokenize_actors
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)


def tokenize_to(cfg: DataConfig, files: list[Path], tokenizer_dir: Path, out: Path) -> None:
    """Pass 1: documents → tokens + signatures, written as Parquet under ``out``."""
    from ray.data import ActorPoolStrategy

    nd = cfg.near_duplicates
    ds = read_documents(cfg, files).map_batches(
        Tokenize,
        fn_constructor_args=(str(tokenizer_dir), cfg.corpus.max_doc_chars, nd.shingle, nd.num_perm),
        batch_size=cfg.tokenize_batch_size,
        compute=ActorPoolStrategy(min_size=1, max_size=tokenizer_pool_size(cfg)),
        num_cpus=0.5,
    )
    ds.write_parquet(str(out), ray_remote_args={"num_cpus": READ_CPUS})


def read_metadata(docs: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, token counts and signatures of the tokenized documents (no tokens are read)."""
    import pyarrow.dataset as pads

    table = pads.dataset(str(docs), format="parquet").to_table(columns=list(DOC_COLUMNS))
    if table.num_rows == 0:
        raise DistillError("the corpus is empty: no document was read")
    sig = table.column("sig").combine_chunks()
    sigs = sig.flatten().to_numpy().reshape(table.num_rows, sig.type.list_size)
    return (
        np.asarray(table.column("doc_id").to_pylist(), dtype=object),
        table.column("n_tokens").to_numpy(),
        sigs,
    )


def _assign(batch, plan) -> Any:
    """Keep the documents the plan packs; add their ``group`` and ``position``."""
    import pyarrow as pa
    import ray

    if isinstance(plan, ray.ObjectRef):
        plan = ray.get(plan)
    ids = np.asarray(batch.column("doc_id").to_pylist(), dtype=str)
    group, pos = plan.lookup(ids)
    keep = group >= 0
    out = batch.filter(pa.array(keep))
    return out.append_column("group", pa.array(group[keep])).append_column(
        "position", pa.array(pos[keep])
    )


def _pack_group(table, groups: dict[str, np.ndarray], seq_len: int, eos: int) -> Any:
    """One packing group → its rows, with their split and global row index."""
    import pyarrow as pa

    g = int(table.column("group")[0].as_py())
    # one copy of each document (rows with the same content share an id, a group and a position)
    _, once = np.unique(
        np.asarray(table.column("doc_id").to_pylist(), dtype=object), return_index=True
    )
    table = table.take(np.sort(once))
    order = np.argsort(table.column("position").to_numpy(), kind="stable")
    col = table.column("input_ids").combine_chunks()
    offsets = col.offsets.to_numpy()
    flat = col.values.to_numpy()
    docs = [flat[offsets[i] : offsets[i + 1]] for i in order]
    rows = pack_concat(docs, seq_len, eos, int(groups["rows"][g]))
    first = int(groups["first"][g])
    return pa.table(
        {
            "split": pa.array([SPLITS[int(groups["split"][g])]] * len(rows), pa.string()),
            "row": pa.array(np.arange(first, first + len(rows), dtype=np.int64)),
            "input_ids": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), seq_len),
        }
    )


def pack_to(cfg: DataConfig, docs: Path, plan: Plan, eos: int, out: Path) -> None:
    """Pass 2: the planned groups packed in parallel, written by ``PackedRowsDatasink``."""
    import ray
    import ray.data

    groups = {"split": plan.group_split, "first": plan.group_first_row, "rows": plan.group_rows}
    ds = ray.data.read_parquet(str(docs), columns=["doc_id", "input_ids"], num_cpus=READ_CPUS)
    ds = ds.map_batches(_assign, fn_kwargs={"plan": ray.put(plan)}, batch_format="pyarrow")
    ds = ds.groupby("group").map_groups(
        _pack_group,
        fn_kwargs={"groups": groups, "seq_len": cfg.seq_len, "eos": eos},
        batch_format="pyarrow",
    )
    ds.write_datasink(PackedRowsDatasink(str(out)), ray_remote_args={"num_cpus": READ_CPUS})


def write_documents(path: Path, plan: Plan) -> None:
    """Per document: id, tokens, cluster (its smallest doc id), split, position, packed or not."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "doc_id": pa.array(plan.doc_ids.tolist(), pa.string()),
            "n_tokens": pa.array(plan.n_tokens),
            "cluster": pa.array(plan.doc_ids[plan.cluster].tolist(), pa.string()),
            "split": pa.array([SPLITS[int(s)] for s in plan.split], pa.string()),
            "position": pa.array(plan.position),
            "packed": pa.array(plan.doc_group >= 0),
        }
    )
    pq.write_table(table, path)


@contextmanager
def data_context() -> Iterator[None]:
    """Ordered execution (``limit`` keeps the first documents) and a task-based sort shuffle
    (no aggregator actors to place on small clusters) for the datasets built inside."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.shuffle_strategy)
    ctx.execution_options.preserve_order = True
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.shuffle_strategy = saved


def corpus_key(cfg: DataConfig, files: list[Path], tokenizer_dir: Path) -> str:
    return hashlib.sha256(
        json.dumps(
            {
                "corpus": fingerprint(cfg.corpus, files),
                "tokenizer": tokenizer_sha256(tokenizer_dir),
                "data": cfg.model_dump(mode="json"),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()


def prepare_corpus(
    cfg: DataConfig, tokenizer_dir: Path, out_dir: Path, reuse: Sequence[Path] = ()
) -> PackedCorpus:
    """Tokenize, split and pack the corpus into ``out_dir``; an existing packed corpus with the
    same key (in ``out_dir``, else in one of the ``reuse`` directories) is opened instead."""

    files = resolve_files(cfg.corpus)
    key = corpus_key(cfg, files, tokenizer_dir)
    out_dir = Path(out_dir)
    for d in (out_dir, *reuse):
        meta_path = Path(d) / "meta.json"
        if meta_path.exists() and json.loads(meta_path.read_text()).get("fingerprint") == key:
            return PackedCorpus.open(Path(d))
    eos = load_tokenizer(tokenizer_dir).eos_token_id
    with atomic_dir(out_dir) as tmp:
        with data_context():
            tokenize_to(cfg, files, tokenizer_dir, tmp / "_docs")
            plan = make_plan(*read_metadata(tmp / "_docs"), cfg)
            pack_to(cfg, tmp / "_docs", plan, eos, tmp)
        shutil.rmtree(tmp / "_docs")
        for s, name in ((TRAIN, "train"), (HELDOUT, "heldout")):
            check_parts(tmp / f"{name}.parquet", plan.rows(s))
        write_documents(tmp / "documents.parquet", plan)
        (tmp / "meta.json").write_text(json.dumps(_meta(key, cfg, plan), indent=1))
    return PackedCorpus.open(out_dir)


def _meta(key: str, cfg: DataConfig, plan: Plan) -> dict[str, Any]:
    sizes = np.unique(plan.cluster, return_counts=True)[1]
    return {
        "fingerprint": key,
        "seq_len": cfg.seq_len,
        "train_rows": plan.rows(TRAIN),
        "heldout_rows": plan.rows(HELDOUT),
        "train_documents": plan.documents(TRAIN),
        "heldout_documents": plan.documents(HELDOUT),
        "train_tokens": plan.rows(TRAIN) * cfg.seq_len,
        "heldout_tokens": plan.rows(HELDOUT) * cfg.seq_len,
        "documents": len(plan.doc_ids),
        "near_duplicate_clusters": len(sizes),
        "largest_cluster": int(sizes.max()),
        "documents_in_shared_clusters": int(sizes[sizes > 1].sum()),
        "doc_ids": "path relative to the corpus root (text files) or content sha256 (rows)",
        "order": "seeded hash of the doc id inside each split (data.seed)",
    }
