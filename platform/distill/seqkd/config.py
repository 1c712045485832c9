"""Settings of the ``generate`` and ``sft`` stages (sequence-level / black-box distillation).

The teacher that writes the answers is a discriminated union on ``kind``::

    generate:
      teacher: {kind: local}                                   # the pipeline's teacher, Ray actors
      teacher: {kind: http, base_url: http://127.0.0.1:8000, model: gpt-x, api_key_env: MY_KEY}
      prompts: {source: docstrings, max_prompts: 64}           # or {source: file, path: p.jsonl}
      decoding: {n: 2, temperature: 0.7, top_p: 0.95, max_new_tokens: 96, seed: 0}
    sft:
      filters: {length: {max: 400}, dedup: {near_threshold: 0.8}}
      steps: 60
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from distill.config.base import StrictModel
from distill.data.config import ContaminationConfig
from distill.data.filters import FiltersConfig


class DecodingConfig(StrictModel):
    """Sampling settings, recorded in the generation manifest."""

    n: int = Field(1, ge=1, le=32, description="completions per prompt")
    temperature: float = Field(0.7, ge=0, le=5, description="0 = greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1, le=8192)
    seed: int = 0

    @model_validator(mode="after")
    def _greedy(self) -> DecodingConfig:
        if self.temperature == 0 and self.n > 1:
            raise ValueError(
                f"decoding.n={self.n} with temperature 0 gives {self.n} identical completions; "
                "use n: 1 or a temperature > 0"
            )
        return self


class LocalTeacher(StrictModel):
    """The pipeline's teacher checkpoint (``ctx.teacher.path``) on a Ray Data actor pool."""

    kind: Literal["local"] = "local"
    actors: int = Field(1, ge=1, description="actor pool size")
    cpus_per_actor: float = Field(
        0.5, gt=0, le=0.5, description="≤ 0.5 on CPU, else read tasks starve (see design.md)"
    )
    gpus_per_actor: float = Field(0, ge=0)
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads per actor; unset = CPU count / actors"
    )
    batch_size: int = Field(4, ge=1, description="prompts generated together (left-padded)")
    dtype: Literal["float32", "bfloat16"] = "float32"


class HTTPTeacher(StrictModel):
    """An OpenAI-compatible endpoint (``/v1/completions`` or ``/v1/chat/completions``)."""

    kind: Literal["http"] = "http"
    base_url: str = Field(..., pattern=r"^https?://", description="e.g. http://127.0.0.1:8000")
    model: str = Field(..., min_length=1)
    api_key_env: str | None = Field(None, description="name of the env var holding the API key")
    endpoint: Literal["chat", "completions"] = "chat"
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    requests_per_s: float = Field(2.0, gt=0, description="rate limit over all actors")
    request_logprobs: bool = Field(True, description="ask for logprobs (mean teacher log-prob)")
    actors: int = Field(1, ge=1)
    preflight: bool = Field(True, description="one tiny request from the driver before the pool")


TeacherSpec = Annotated[LocalTeacher | HTTPTeacher, Field(discriminator="kind")]


class PromptsConfig(StrictModel):
    source: Literal["docstrings", "file"] = Field(
        "docstrings",
        description="docstrings = tasks from the corpus' .py files (held-out documents excluded); "
        "file = a JSONL with `prompt` or chat `messages` per line",
    )
    path: Path | None = Field(None, description="JSONL prompt file (source: file)")
    on_bad_line: Literal["skip", "error"] = "skip"
    max_prompts: int | None = Field(64, ge=1, description="first N by prompt hash (None = all)")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="split by prompt hash")
    max_files: int | None = Field(
        200, ge=1, description="docstrings: first N corpus files (in the corpus' hash order)"
    )
    min_doc_chars: int = Field(30, ge=1, description="docstrings: shortest docstring used")
    max_doc_chars: int = Field(600, ge=1, description="docstrings: longest docstring used")

    @model_validator(mode="after")
    def _path(self) -> PromptsConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("prompts.path is required when prompts.source is 'file'")
        if self.source == "docstrings" and self.path is not None:
            raise ValueError("prompts.path is only used with prompts.source: file")
        return self


class GenerateConfig(StrictModel):
    teacher: TeacherSpec = Field(default_factory=LocalTeacher)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    chat_template: bool = Field(True, description="wrap prompts with the tokenizer's template")
    shard_rows: int = Field(256, ge=1, description="rows per Parquet shard")


class SFTConfig(StrictModel):
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    use: Literal["kept", "all"] = Field(
        "kept", description="kept = filtered rows; all = no filtering (for comparisons)"
    )
    seq_len: int | None = Field(None, ge=8, description="unset = data.seq_len")
    packing: bool = Field(True, description="pack examples into rows (else one padded row each)")
    steps: int = Field(60, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    eval_rows: int = Field(16, ge=0, description="held-out prompt rows for completion loss")
    min_examples: int = Field(1, ge=1, description="fail when fewer kept examples remain")
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)

    @model_validator(mode="after")
    def _warmup(self) -> SFTConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"sft.warmup_steps ({self.warmup_steps}) must be < sft.steps ({self.steps})"
            )
        return self
