"""Stage ``generate``: the teacher writes ``n`` completions per prompt (Ray Data actor pool).

Prompts (a JSONL file, or tasks from the corpus' Python docstrings with the corpus' held-out
documents excluded) → ``map_batches(LocalGenerator | HTTPGenerator, ActorPoolStrategy)`` →
``<workdir>/generations/`` (Parquet shards + ``manifest.json`` with the teacher, the decoding
settings and the counts)::

    distill run pipelines/configs/smoke-seqkd.yaml        # stages: [generate, sft, evaluate]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.seqkd.config import GenerateConfig, HTTPTeacher, LocalTeacher
from distill.seqkd.prompts import Prompt, load_prompts, prompt_text
from distill.seqkd.store import GenerationWriter
from distill.stages import StageContext, StageResult

log = logging.getLogger(__name__)


def _items(prompts: list[Prompt]) -> list[dict[str, str]]:
    return [
        {
            "key": p["key"],
            "id": p["id"],
            "prompt": prompt_text(p),
            "messages_json": json.dumps(p["messages"]) if p.get("messages") else "",
            "kind": p["kind"],
            "split": p["split"],
        }
        for p in prompts
    ]


def _api_key(t: HTTPTeacher) -> str | None:
    if t.api_key_env is None:
        return None
    key = os.environ.get(t.api_key_env)
    if not key:
        raise DistillError(
            f"generate.teacher.api_key_env: environment variable {t.api_key_env} is not set"
        )
    return key


def _teacher_info(ctx: StageContext, t: LocalTeacher | HTTPTeacher) -> dict[str, Any]:
    if isinstance(t, HTTPTeacher):
        return {"kind": "http", "name": t.model, "base_url": t.base_url, "endpoint": t.endpoint}
    return {
        "kind": "local",
        "name": ctx.teacher.name,
        "path": str(ctx.teacher.path),
        "weights_sha256": ctx.teacher.weights_sha256,
        "tokenizer_sha256": ctx.teacher.tokenizer_sha256,
    }


def _dataset(ctx: StageContext, cfg: GenerateConfig, items: list[dict[str, str]]):
    import ray.data
    from ray.data import ActorPoolStrategy

    from distill.seqkd.teachers import HTTPClient, HTTPGenerator, LocalGenerator

    t = cfg.teacher
    decoding = cfg.decoding.model_dump()
    ds = ray.data.from_items(items)
    if isinstance(t, LocalTeacher):
        threads = t.torch_threads or max(1, (os.cpu_count() or 1) // t.actors)
        return ds.map_batches(
            LocalGenerator,
            fn_constructor_args=(
                str(ctx.teacher.path),
                decoding,
                cfg.chat_template,
                threads,
                t.dtype,
            ),
            compute=ActorPoolStrategy(size=t.actors),
            num_cpus=t.cpus_per_actor,
            num_gpus=t.gpus_per_actor or None,
            batch_size=t.batch_size,
        )
    key = _api_key(t)
    if t.preflight:  # one 1-token request: a dead endpoint fails here, clearly, before the pool
        probe = HTTPClient(t.model_dump(), {**decoding, "n": 1, "max_new_tokens": 1}, key, 1e9)
        probe.complete(items[0])
    return ds.map_batches(
        HTTPGenerator,
        fn_constructor_args=(t.model_dump(), decoding, key, str(ctx.teacher.path)),
        compute=ActorPoolStrategy(size=t.actors),
        num_cpus=0.25,
        batch_size=1,
    )


def _distill_error(e: BaseException) -> DistillError | None:
    """The DistillError inside a Ray task failure, if there is one (clear message for users)."""
    cur: BaseException | None = e
    visited: set[int] = set()
    while cur is not None and id(cur) not in visited:  # exception chains can be cyclic
        if isinstance(cur, DistillError):
            return DistillError(str(cur))
        visited.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    text = str(e)
    marker = "DistillError: "
    if marker in text:
        return DistillError(text.split(marker, 1)[1].strip().splitlines()[0])
    return None


def generate(ctx: StageContext, cfg: GenerateConfig, prompts: list[Prompt], out: Path) -> dict:
    """Run the teacher over ``prompts`` into a complete store at ``out``; return its manifest."""
    from distill.raycluster import ensure_ray

    ensure_ray(ctx.config.ray)
    items = _items(prompts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    writer = GenerationWriter(tmp)
    t0 = time.perf_counter()
    finish: Counter[str] = Counter()
    tokens = completions = no_logprob = 0
    total = len(items) * cfg.decoding.n
    try:
        with ctx.progress.task("generate", total, "completions") as bar:
            ds = _dataset(ctx, cfg, items)
            for batch in ds.iter_batches(batch_size=cfg.shard_rows, batch_format="numpy"):
                rows = {k: v.tolist() for k, v in batch.items()}
                writer.write(rows)
                finish.update(rows["finish_reason"])
                tokens += sum(rows["n_tokens"])
                completions += len(rows["key"])
                no_logprob += sum(v != v for v in rows["mean_logprob"])  # NaN = unknown
                bar.update(completions, tok_s=tokens / max(time.perf_counter() - t0, 1e-9))
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = e if isinstance(e, DistillError) else _distill_error(e)
        if err is not None:
            raise err from None
        raise
    seconds = time.perf_counter() - t0
    splits = Counter(p["split"] for p in prompts)
    manifest = writer.finish(
        {
            "teacher": _teacher_info(ctx, cfg.teacher),
            "decoding": cfg.decoding.model_dump(),
            "chat_template": cfg.chat_template,
            "prompts": {
                "source": cfg.prompts.source,
                "path": str(cfg.prompts.path) if cfg.prompts.path else None,
                "count": len(prompts),
                "train": splits.get("train", 0),
                "heldout": splits.get("heldout", 0),
                "heldout_fraction": cfg.prompts.heldout_fraction,
                "fingerprint": hashlib.sha256(
                    "".join(p["key"] for p in prompts).encode()
                ).hexdigest(),
            },
            "counts": {
                "completions": completions,
                "tokens": tokens,
                "finish_reasons": dict(finish),
                "without_logprob": no_logprob,
            },
            "throughput": {
                "seconds": seconds,
                "completions_per_s": completions / seconds if seconds else 0.0,
                "tokens_per_s": tokens / seconds if seconds else 0.0,
            },
        }
    )
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return manifest


def run(ctx: StageContext, cfg: GenerateConfig) -> StageResult:
    from distill.data.corpus import document_ids, resolve_files

    files = resolve_files(ctx.config.data.corpus) if cfg.prompts.source == "docstrings" else []
    if files:  # the corpus' held-out documents never become prompts
        held, ids = ctx.corpus.heldout_doc_ids(), document_ids(ctx.config.data.corpus, files)
        files = [f for f in files if ids[str(f)] not in held]
    prompts, problems = load_prompts(cfg.prompts, files, ctx.corpus.root)
    if problems:
        ctx.tracker.log_dict({"bad_lines": problems}, "prompt_problems.json")
    out = ctx.output_dir("generations")
    manifest = generate(ctx, cfg, prompts, out)
    if manifest["counts"]["without_logprob"]:
        log.warning(
            "%d completion(s) have no teacher log-prob (the server returned none): the log-prob "
            "filter will let them pass",
            manifest["counts"]["without_logprob"],
        )
    metrics = {
        "prompts": float(len(prompts)),
        "prompts.bad_lines": float(len(problems)),
        "prompts.heldout": float(manifest["prompts"]["heldout"]),
        "completions": float(manifest["counts"]["completions"]),
        "tokens": float(manifest["counts"]["tokens"]),
        "truncated": float(manifest["counts"]["finish_reasons"].get("length", 0)),
        "without_logprob": float(manifest["counts"]["without_logprob"]),
        "completions_per_s": manifest["throughput"]["completions_per_s"],
        "tokens_per_s": manifest["throughput"]["tokens_per_s"],
    }
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_dict(manifest, "generations_manifest.json")
    ctx.tracker.set_tags(
        {
            "teacher.kind": manifest["teacher"]["kind"],
            "generate.teacher": manifest["teacher"]["name"],
        }
    )
    digest = manifest["prompts"]["fingerprint"]
    store_sha = hashlib.sha256(json.dumps(manifest["shards"]).encode()).hexdigest()
    ctx.tracker.record_output("generations", out, store_sha)
    source = Path(cfg.prompts.path).resolve() if cfg.prompts.path else ctx.corpus.root.resolve()
    ctx.tracker.log_input_dataset("prompts", source.as_uri(), digest, "generate")
    return StageResult(
        outputs={"generations": out},
        metrics=metrics,
        summary={
            k: manifest[k] for k in ("teacher", "decoding", "prompts", "counts", "throughput")
        },
    )
