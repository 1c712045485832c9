"""Settings of the ``soft_labels`` stage (``soft_labels:`` section of a pipeline YAML).

distill run pipelines/configs/smoke.yaml --set soft_labels.k=16 --set soft_labels.overwrite=true
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.config.base import StrictModel


class SoftLabelsConfig(StrictModel):
    """Teacher soft labels per token (T=1), scored by a Ray Data actor pool: top-k log-probs +
    tail mass, or N tokens sampled from the teacher (unbiased; ``distill.labels.sampled``)."""

    encoding: Literal["topk", "sampled"] = Field(
        "topk",
        description="topk: k largest log-probs + tail mass (biased head); sampled: `samples` "
        "draws per position stored as unique ids + counts (unbiased for forward KL)",
    )
    k: int = Field(16, ge=1, le=4096, description="topk: log-probs kept per position (≥ 1)")
    samples: int = Field(
        32, ge=1, le=255, description="sampled: draws per position (counts are uint8)"
    )
    seed: int = Field(0, description="sampled: seed of the draws (a rerun draws the same)")
    batch_size: int = Field(4, ge=1, description="rows per teacher forward (per actor batch)")
    num_actors: int = Field(1, ge=1, description="TeacherScorer actors (one teacher each)")
    num_cpus_per_actor: float = Field(
        0.5,
        gt=0,
        description="logical CPUs each actor reserves; keep ≤ 0.5 on a 2-core CPU cluster "
        "(1 CPU per actor starves Ray Data's read tasks and hangs)",
    )
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor reserves")
    actor_start_timeout_s: int = Field(
        600,
        ge=1,
        description="wait until every scorer actor has started (and loaded its teacher) before "
        "scoring, at most this long; then fail naming the resources the pool asked for",
    )
    placement: Literal["spread", "strict_spread"] = Field(
        "spread",
        description="spread: Ray Data places the actors (best effort; two can share a node "
        "that another stage was still using); strict_spread: one actor per node (a Ray "
        "placement group), waiting at most actor_start_timeout_s for num_actors free nodes",
    )
    num_threads_per_actor: int | None = Field(
        None,
        ge=1,
        description="torch threads inside each CPU actor; unset = cluster CPUs / num_actors "
        "(Ray would otherwise pin a fractional-CPU actor to one thread)",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="teacher compute dtype; auto = bfloat16 on GPU and on CPUs with native bf16 "
        "(avx512_bf16/amx_bf16: 1.8x faster, KL(fp32 ‖ bf16) 0.0015 nats), else float32",
    )
    logprob_encoding: Literal["float16", "int8"] = Field(
        "float16",
        description="float16 log-probs, or int8: uint8 codes with a per-position float16 scale",
    )
    rows_per_shard: int = Field(
        64, ge=1, description="corpus rows per Parquet shard (the unit of resume)"
    )
    max_rows: int | None = Field(
        None, ge=1, description="score only the first N train rows; unset = all"
    )
    fidelity_positions: int = Field(
        512,
        ge=0,
        description="positions compared with the full teacher distribution (0 = skip)",
    )
    compression: Literal["zstd", "snappy", "none"] = Field(
        "zstd", description="Parquet compression of the shards"
    )
    overwrite: bool = Field(
        False,
        description="replace a store made with another teacher/tokenizer/k/corpus "
        "instead of refusing",
    )

    @model_validator(mode="after")
    def _check(self) -> SoftLabelsConfig:
        if self.encoding == "sampled" and self.logprob_encoding != "float16":
            raise ValueError(
                "soft_labels.logprob_encoding applies to encoding: topk only (a sampled store "
                "keeps counts, not log-probs): remove it or set encoding: topk"
            )
        return self

    @property
    def stored_k(self) -> int:
        """The manifest's ``k``: ids per position (topk) or draws per position (sampled)."""
        return self.samples if self.encoding == "sampled" else self.k

    def resolved_dtype(self, on_gpu: bool) -> str:
        """``auto`` → bfloat16 on GPU or a CPU with native bf16, else float32: there a bf16
        forward is faster and its error is far below the top-k truncation's
        (``benchmarks/soft_labels.py`` measures both)."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if on_gpu or cpu_has_native_bf16() else "float32"


def cpu_has_native_bf16() -> bool:
    """True when ``/proc/cpuinfo`` lists ``avx512_bf16`` or ``amx_bf16`` (Linux only)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
