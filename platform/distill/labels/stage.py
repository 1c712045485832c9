"""Stage ``soft_labels``: teacher top-k log-probs (T=1) + tail mass for every corpus token.

Ray Data holds the row numbers of the shards still to score (one block per shard) and maps
them through ``TeacherScorer`` actors (one teacher each, placed by ``soft_labels.placement``),
which read those rows of ``ctx.corpus.train_path`` (only their row groups) and score them; the
driver writes each shard as soon as all its rows arrived (temp name + rename) and updates
``manifest.json``, so an interrupted run resumes where it stopped::

    distill run pipelines/configs/smoke.yaml          # stages: [soft_labels, ...]
    python -c "from distill.labels.store import LabelStore; print(LabelStore.open('runs/smoke/labels').manifest)"
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distill.config.base import DistillError
from distill.labels.config import SoftLabelsConfig
from distill.labels.manifest import (
    CorpusRef,
    Manifest,
    ShardEntry,
    TeacherRef,
    encodings_for,
    write_manifest,
)
from distill.labels.placement import scorer_placement
from distill.labels.resume import prepare_store
from distill.labels.scorer import TeacherScorer
from distill.labels.shards import (
    STORE_COLUMNS,
    ShardSpec,
    id_dtype,
    sha256_of,
    shard_fidelity,
    shard_plan,
    write_shard,
)
from distill.models.hashing import file_sha256
from distill.stages import StageContext, StageResult


def teacher_vocab_size(model_dir: Path) -> int:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return int(cfg["vocab_size"])


def row_numbers(todo: list[ShardSpec]):
    """Ray Data of the ``todo`` shards' row numbers (column ``data``), one block per shard.

    In-memory blocks, not a read: a read task wants a whole CPU, which a multi-node cluster
    whose CPUs the scorer actors split may never free. ``from_numpy`` runs its tasks now, so
    call it before any placement group is reserved. Every block is there when scoring starts,
    so the pool hands one to each actor at once (a streamed read delivered them one by one and
    a fast teacher could score them all on one actor).
    """
    import ray.data

    return ray.data.from_numpy([np.arange(s.start_row, s.stop_row, dtype=np.int64) for s in todo])


def scoring_dataset(
    rows, train_path: Path, cfg: SoftLabelsConfig, scorer: dict, remote_args: dict | None = None
):
    """The lazy pipeline: :func:`row_numbers` → ``TeacherScorer`` actors, which read their rows
    of ``train_path`` (only the row groups holding them) and score them.

    Every row carries its global index, so nothing depends on Ray Data's block order.
    """
    from ray.data import ActorPoolStrategy

    # Start every actor (a teacher load each) before the first batch, so work is not handed
    # only to the first actor ready, and a pool the cluster cannot place fails after
    # actor_start_timeout_s instead of waiting forever. Which node each actor lands on is
    # soft_labels.placement (distill.labels.placement).
    rows.context.wait_for_min_actors_s = cfg.actor_start_timeout_s
    return rows.map_batches(
        TeacherScorer,
        fn_constructor_kwargs={**scorer, "corpus_path": str(train_path)},
        batch_size=cfg.batch_size,
        batch_format="numpy",
        # one batch in flight per actor (Ray's default queues 4): a teacher forward takes
        # seconds, so prefetching gains little, and queued batches can leave an actor idle
        # while another works through its queue.
        compute=ActorPoolStrategy(size=cfg.num_actors, max_tasks_in_flight_per_actor=1),
        num_cpus=cfg.num_cpus_per_actor,
        num_gpus=cfg.num_gpus_per_actor or None,
        **(remote_args or {}),  # soft_labels.placement (distill.labels.placement)
    )


def _shard_columns(parts: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], dict]:
    cols = {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in parts[0]}
    order = np.argsort(cols["row"], kind="stable")
    cols = {key: v[order] for key, v in cols.items()}
    stats = {
        "fid": shard_fidelity(cols),
        "tail_sum": float(cols["tail_mass"].astype(np.float64).sum())
        if "tail_mass" in cols
        else 0.0,
        "score_s": float(cols["_score_s"].sum()),
        "rows": cols["row"],
        "nodes": sorted({str(n) for n in cols["_node"]}) if "_node" in cols else [],
    }
    return {key: cols[key] for key in STORE_COLUMNS if key in cols}, stats


def _batches(ds):
    """``ds``'s batches; a scorer pool that cannot start in time is one clear error."""
    import ray.exceptions

    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except ray.exceptions.GetTimeoutError as e:
        timeout = ds.context.wait_for_min_actors_s
        raise DistillError(
            f"soft_labels: the TeacherScorer actors did not all start within {timeout} s "
            "(soft_labels.actor_start_timeout_s): the cluster lacks the resources the pool asks "
            "for (soft_labels.num_actors x num_cpus_per_actor / num_gpus_per_actor), or loading "
            "the teacher is slower; lower num_actors, add nodes or raise the timeout"
        ) from e


def score_shards(
    ds,
    root: Path,
    manifest: Manifest,
    todo: list[ShardSpec],
    compression: str,
    on_rows: Callable[[int], None] | None = None,
) -> float:
    """Drain ``ds``; write each shard once all its rows arrived; returns actor compute seconds.
    ``on_rows(n)`` is told of every ``n`` rows received (the progress bar)."""
    by_index = {s.index: s for s in todo}
    rps = manifest.rows_per_shard
    pending: dict[int, list[dict[str, np.ndarray]]] = {s.index: [] for s in todo}
    counts = dict.fromkeys(pending, 0)
    compute_s = 0.0
    for batch in _batches(ds):
        rows = np.asarray(batch["row"], dtype=np.int64)
        if on_rows is not None:
            on_rows(len(rows))
        shard_of = rows // rps
        for idx in np.unique(shard_of):
            sel = shard_of == idx
            pending[int(idx)].append({key: np.asarray(v)[sel] for key, v in batch.items()})
            counts[int(idx)] += int(sel.sum())
            spec = by_index[int(idx)]
            if counts[spec.index] < spec.rows:
                continue
            columns, stats = _shard_columns(pending.pop(spec.index))
            expected = np.arange(spec.start_row, spec.stop_row)
            if not np.array_equal(stats["rows"], expected):
                raise DistillError(f"shard {spec.file}: got rows that do not match its range")
            size = write_shard(root / spec.file, columns, compression)
            compute_s += stats["score_s"]
            manifest.shards.append(
                ShardEntry(
                    file=spec.file,
                    start_row=spec.start_row,
                    rows=spec.rows,
                    sha256=sha256_of(root / spec.file),
                    bytes=size,
                    tokens=spec.rows * manifest.seq_len,
                    tail_sum=stats["tail_sum"],
                    fidelity=stats["fid"],
                    nodes=stats["nodes"],
                )
            )
            write_manifest(root, manifest)
    missing = sorted(pending)
    if missing:
        raise DistillError(f"scoring ended with shards {missing} incomplete (rows lost?)")
    return compute_s


def run(ctx: StageContext, cfg: SoftLabelsConfig) -> StageResult:
    from distill.raycluster import ensure_ray

    t_start = time.perf_counter()
    root = ctx.output_dir("labels")
    teacher_path = Path(ctx.artifacts.get("teacher", ctx.teacher.path))
    vocab = teacher_vocab_size(teacher_path)
    if cfg.encoding == "topk" and cfg.k > vocab:
        raise DistillError(
            f"soft_labels.k={cfg.k} is larger than the teacher's vocabulary ({vocab}); "
            f"allowed 1..{vocab}"
        )
    corpus = ctx.corpus
    num_rows = min(cfg.max_rows or corpus.train_rows, corpus.train_rows)
    if num_rows < 1:
        raise DistillError(f"no training rows to score in {corpus.train_path}")
    on_gpu = cfg.num_gpus_per_actor > 0
    dtype = cfg.resolved_dtype(on_gpu)
    ids = id_dtype(vocab)
    fresh = Manifest(
        teacher=TeacherRef(name=ctx.teacher.name, weights_sha256=ctx.teacher.weights_sha256),
        tokenizer_sha256=ctx.teacher.tokenizer_sha256,
        vocab_size=vocab,
        k=cfg.stored_k,
        encoding=cfg.encoding,
        sample_seed=cfg.seed if cfg.encoding == "sampled" else None,
        seq_len=corpus.seq_len,
        compute_dtype=dtype,
        encodings=encodings_for(cfg.encoding, ids, cfg.logprob_encoding),
        corpus=CorpusRef(
            fingerprint=corpus.fingerprint, path=str(corpus.train_path), rows=num_rows
        ),
        rows_per_shard=cfg.rows_per_shard,
    )
    plan = shard_plan(num_rows, cfg.rows_per_shard)
    manifest, todo = prepare_store(root, fresh, plan, cfg.overwrite)

    total_tokens = num_rows * corpus.seq_len
    scorer: dict[str, Any] = {
        "model_path": str(teacher_path),
        "k": cfg.stored_k,
        "encoding": cfg.encoding,
        "seed": cfg.seed,
        "dtype": dtype,
        "device": "cuda" if on_gpu else "cpu",
        "logprob_encoding": cfg.logprob_encoding,
        "id_dtype": ids,
        "seq_len": corpus.seq_len,
        "fidelity_stride": max(1, total_tokens // cfg.fidelity_positions)
        if cfg.fidelity_positions
        else 0,
        "num_threads": cfg.num_threads_per_actor,
    }
    if scorer["num_threads"] is None and not on_gpu:
        import os

        scorer["num_threads"] = max(1, (os.cpu_count() or 1) // cfg.num_actors)
    scored_tokens = sum(s.rows for s in todo) * corpus.seq_len
    t_score = time.perf_counter()
    compute_s = 0.0
    if todo:
        ensure_ray(ctx.config.ray)
        rows = row_numbers(todo)  # before the placement group: from_numpy's tasks want a CPU
        total = sum(s.rows for s in todo)
        with (
            scorer_placement(cfg) as remote_args,
            ctx.progress.task("soft labels", total, "rows") as bar,
        ):
            ds = scoring_dataset(rows, corpus.train_path, cfg, scorer, remote_args)

            def received(n: int) -> None:
                elapsed = time.perf_counter() - t_score
                bar.advance(n, tok_s=(bar.completed + n) * corpus.seq_len / max(elapsed, 1e-9))

            compute_s = score_shards(ds, root, manifest, todo, cfg.compression, received)
    score_s = time.perf_counter() - t_score
    manifest.finalize()
    manifest.complete = True
    path = write_manifest(root, manifest)
    return _report(ctx, cfg, manifest, path, todo, scored_tokens, score_s, compute_s, t_start)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _report(
    ctx: StageContext,
    cfg: SoftLabelsConfig,
    m: Manifest,
    manifest_path: Path,
    todo: list[ShardSpec],
    scored_tokens: int,
    score_s: float,
    compute_s: float,
    t_start: float,
) -> StageResult:
    fid = m.fidelity
    assert fid is not None
    metrics = {
        "rows": float(m.rows),
        "tokens": float(m.tokens),
        "scored_tokens": float(scored_tokens),
        "tokens_per_s": scored_tokens / score_s if scored_tokens and score_s > 0 else 0.0,
        "actor_tokens_per_s": scored_tokens / compute_s if compute_s > 0 else 0.0,
        "bytes_per_token": m.bytes_per_token,
        "captured_mass": _nan(fid.captured_mass),
        "kl_full_vs_topk": _nan(fid.kl),
        "target_tv": _nan(fid.target_tv),
        "grad_rel_err": _nan(fid.grad_rel_err),
        "captured_mass_all": _nan(fid.captured_mass_all),
        "shards_scored": float(len(todo)),
        "shards_reused": float(len(m.shards) - len(todo)),
        "scoring_nodes": float(len(m.nodes)),
        "stage_seconds": time.perf_counter() - t_start,
    }
    metrics = {k: v for k, v in metrics.items() if v == v}  # drop NaN (no fidelity sample)
    tracker = ctx.tracker
    tracker.log_params(cfg.model_dump(mode="json"))
    tracker.log_params(
        {"compute_dtype": m.compute_dtype, "encodings": m.encodings.model_dump()}, "resolved."
    )
    tracker.log_metrics(metrics)
    tracker.record_input("corpus", ctx.corpus.train_path, ctx.corpus.fingerprint)
    tracker.record_input(
        "teacher", ctx.artifacts.get("teacher", ctx.teacher.path), ctx.teacher.weights_sha256
    )
    tracker.log_input_dataset(
        "corpus", Path(ctx.corpus.train_path).resolve().as_uri(), ctx.corpus.fingerprint, "train"
    )
    root = manifest_path.parent
    tracker.record_output("soft_labels", root, file_sha256(manifest_path))
    tracker.log_artifact(manifest_path, "soft_labels")
    summary = {
        "dir": str(root),
        "k": m.k,
        "encoding": m.encoding,
        "rows": m.rows,
        "tokens": m.tokens,
        "bytes_per_token": m.bytes_per_token,
        "fidelity": fid.model_dump(),
        "compute_dtype": m.compute_dtype,
        "shards": len(m.shards),
        "shards_scored": len(todo),
        "nodes": m.nodes,
    }
    return StageResult(outputs={"soft_labels": root}, metrics=metrics, summary=summary)
