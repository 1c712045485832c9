"""Typed arguments of the Serve application (the ``args:`` block of ``deploy/serve.yaml``).

Ray validates ``args`` against :class:`ServeArgs` before building anything (typed app builder)::

    serve run deploy/serve.yaml          # or: distill serve deploy/serve.yaml

A model is named by a local HF directory, an MLflow registered version ``models:/NAME/VERSION``
or alias ``models:/NAME@champion`` (resolved through ``tracking_uri``), or ``gguf:default`` (the
packaged SmolLM2 teacher, converted once into ``~/.cache/distill``).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distill.config.base import StrictModel
from distill.lineage.resolve import parse_model_uri
from distill.monitor.config import RequestLogConfig

Scoring = Literal["mean_logprob", "min_prob", "entropy", "quantile"]
MODEL_REF_HELP = (
    "a local HF directory, 'models:/NAME/VERSION' or 'models:/NAME@ALIAS' (MLflow), "
    "or 'gguf:default'"
)


Engine = Literal["hf", "onnxruntime-genai", "vllm"]
# speculative decoding in distill's own engines: the teacher's engine verifies, the student's drafts
VERIFY_ENGINES = ("hf",)
DRAFT_ENGINES = ("hf", "onnxruntime-genai")
MAX_DRAFT_TOKENS = 16

# Ray Serve's high-throughput mode (Ray >= 2.56): user code and the request router on each
# replica's own event loop, gRPC between replicas, and each ingress (Router) replica serving
# HTTP on a port of its own too (direct ingress, serve/ingress.py; the proxy port still
# forwards to it); it serves more tokens/s under concurrent load (benchmarks/serve_load.py,
# docs/serving.md). Every Ray process must see it: `distill serve` sets it before it starts a
# local Ray, a cluster in its pods (k8s/rayservice.yaml).
# Direct ingress holds a Router replica on shutdown by default, for an external load balancer
# (HAProxy) to drain it; a local Ray has none, so the drain is cut to keep shutdown quick.
SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


def apply_serve_env() -> None:
    """Put :data:`SERVE_ENV` in this process's environment (values already set win), before
    Ray starts: a local Ray's processes inherit it."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


class BatchingConfig(StrictModel):
    """How a model replica batches concurrent requests (continuous batching): the
    ``batching:`` block of a model deployment, and what every engine reads."""

    max_batch_size: int = Field(
        32, ge=1, le=512, description="sequences decoded together in one forward pass"
    )
    max_waiting: int = Field(
        32, ge=0, description="requests admitted but not yet running; beyond: 503 + Retry-After"
    )
    batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="an idle replica waits this long for more arrivals"
    )
    max_prefill_tokens: int = Field(
        4096, ge=1, description="prompt tokens prefilled together in one step"
    )
    max_batches: int = Field(
        8,
        ge=1,
        le=64,
        description="engine onnxruntime-genai only: static batches decoded side by side (one "
        "step each in turn), so a request arriving mid-batch starts at once instead of "
        "waiting for the running batch to end; 1 = one batch at a time",
    )
    max_queue_wait_s: float = Field(
        10.0,
        gt=0,
        description="a request still waiting for a batch slot then, with every slot taken, "
        "gets 503 (a safety net: past limits.max_inflight the Router refuses at once)",
    )
    stream_interval_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="after the first chunk, tokens go out at most this often (fewer messages "
        "through Serve; Ray Serve LLM batches its streams every 50 ms too)",
    )


class ModelDeployment(StrictModel):
    """One model deployment (the student or the teacher)."""

    model: str = Field(..., description=MODEL_REF_HELP)
    engine: Engine = Field(
        "hf",
        description="hf: transformers with continuous batching (CPU/CUDA, the reference); "
        "onnxruntime-genai: an int4 ONNX export (CPU); vllm: Ray Serve LLM on a GPU",
    )
    placement: Literal["replica", "router"] = Field(
        "replica",
        description="replica: Serve replicas of its own (Student / Teacher), scaled by "
        "replicas; router: one engine inside each Router replica (no replica hop per token; "
        "its num_cpus are added to the Router's). engine onnxruntime-genai computes in a child "
        "process either way",
    )
    replicas: int = Field(1, ge=1, le=64, description="Serve replicas of this deployment")
    num_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved per replica")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs per replica (>0 implies device=cuda)")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where the model runs")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype")
    torch_threads: int | None = Field(
        None, ge=1, description="intra-op threads; unset = max(1, round(num_cpus))"
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    max_queued_requests: int = Field(
        64, ge=1, description="Router->replica handle queue; beyond it the Router answers 503"
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to the engine (vllm: vLLM engine args such as max_model_len; "
        "onnxruntime-genai: {spin: false} stops its threads spinning between steps)",
    )

    @field_validator("model")
    @classmethod
    def _model_ref(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError(f"model must be {MODEL_REF_HELP}")
        if v.startswith("models:/"):
            parse_model_uri(v)  # models:/NAME/VERSION or models:/NAME@ALIAS (e.g. @champion)
        if v.startswith("gguf:") and v != "gguf:default":
            raise ValueError(f"only 'gguf:default' is supported as a gguf model ref, got {v!r}")
        return v

    @model_validator(mode="after")
    def _gpu(self) -> ModelDeployment:
        if self.device == "cuda" and self.num_gpus <= 0:
            raise ValueError("device 'cuda' needs num_gpus > 0 (e.g. 1 or 0.5)")
        if self.num_gpus > 0 and self.device != "cuda":
            raise ValueError("num_gpus > 0 needs device: cuda")
        if self.engine == "vllm" and self.num_gpus <= 0:
            raise ValueError("engine vllm needs a GPU: set num_gpus: 1 and device: cuda")
        if self.placement == "router" and self.engine == "vllm":
            raise ValueError(
                "engine vllm runs in Ray Serve LLM replicas: placement must be replica"
            )
        if self.placement == "router" and self.replicas != 1:
            raise ValueError(
                "placement router runs one engine in each Router replica: set "
                "router_replicas, not replicas"
            )
        if self.engine_kwargs and self.engine == "hf":
            raise ValueError("engine_kwargs are for engine vllm / onnxruntime-genai, not hf")
        return self

    @property
    def max_ongoing_requests(self) -> int:
        """Requests one replica holds at once: the running batch plus its waiting queue."""
        return self.batching.max_batch_size + self.batching.max_waiting

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, round(self.num_cpus))


def check_draft_tokens(v: int | str | None) -> int | str | None:
    """``draft_tokens``: an integer in [1, MAX_DRAFT_TOKENS] or ``auto``."""
    if v is None or v == "auto":
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DRAFT_TOKENS:
        raise ValueError(f"draft_tokens must be 1..{MAX_DRAFT_TOKENS} or 'auto', got {v!r}")
    return v


class SpeculativeConfig(StrictModel):
    """``cascade.mode: speculative``: how many tokens the student drafts per teacher forward."""

    draft_tokens: int | Literal["auto"] = Field(
        "auto",
        description=f"tokens the student drafts per step (1..{MAX_DRAFT_TOKENS}), or auto: per "
        "batch size the number with the best measured tokens/s, 0 (the teacher alone) included",
    )
    max_draft_tokens: int = Field(
        8, ge=1, le=MAX_DRAFT_TOKENS, description="the most tokens auto drafts per step"
    )

    @field_validator("draft_tokens")
    @classmethod
    def _draft_tokens(cls, v: int | str) -> int | str:
        return check_draft_tokens(v)  # type: ignore[return-value]


class CascadeConfig(StrictModel):
    """When the teacher answers instead of the student. Changeable live via ``user_config``
    (``mode`` only within what the app was built with: a speculative teacher loads the draft)."""

    mode: Literal["cascade", "speculative"] = Field(
        "cascade",
        description="cascade: the student answers unless it is unsure, then the teacher; "
        "speculative: the student drafts tokens and the teacher verifies them in one forward, "
        "so every answer is the teacher's (greedy: token for token), sooner",
    )
    speculative: SpeculativeConfig = Field(default_factory=SpeculativeConfig)

    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="student confidence below this -> the teacher answers"
    )
    scoring: Scoring = Field(
        "mean_logprob",
        description="mean_logprob: exp(mean token log-prob); min_prob: lowest token probability; "
        "entropy: 1 - mean normalized entropy of the student's next-token distributions; "
        "quantile: exp(the quantile-th quantile of the token log-probs) (Chow-Quantile)",
    )
    quantile: float = Field(
        0.25, ge=0.0, le=1.0, description="q of scoring: quantile (0 = min_prob, 0.5 = median)"
    )
    decide_after_tokens: int = Field(
        16, ge=1, le=4096, description="the student's first N tokens are scored, then decided"
    )
    takeover: Literal["prompt", "prefix"] = Field(
        "prompt",
        description="on fallback the teacher answers from the prompt (the student's tokens are "
        "dropped), or continues the student's first tokens (kept in the answer)",
    )
    fallback: bool = Field(True, description="false = the student always answers")
    fallback_on_error: bool = Field(
        True, description="the teacher answers when the student fails or times out"
    )
    student_timeout_s: float = Field(
        30.0, gt=0, description="time limit for the student to reach the decision"
    )
    calibration: str | None = Field(
        None, description="where threshold / scoring come from (written by `distill calibrate`)"
    )


class Limits(StrictModel):
    """Request limits and overload behaviour of the Router (checked before any tokenization)."""

    max_request_bytes: int = Field(1 << 20, ge=1024, description="HTTP body size (413 above)")
    max_prompt_chars: int = Field(
        32_768, ge=1, description="prompt characters, or all message contents together"
    )
    max_messages: int = Field(64, ge=1, description="chat messages per request")
    max_stop_chars: int = Field(64, ge=1, description="characters per stop string")
    max_inflight: int = Field(
        64, ge=1, description="requests one Router replica works on; beyond: 503 + Retry-After"
    )
    max_queued: int = Field(
        16, ge=1, description="requests Serve queues in front of a Router replica (then 503)"
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After header of 503 answers")
    first_token_timeout_s: float = Field(
        30.0, gt=0, description="a model's first token (queueing included); then 503"
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="a whole generation; then the generation is cancelled"
    )


class ServeArgs(StrictModel):
    """``args:`` of ``distill.serve.app:build_app``."""

    student: ModelDeployment
    teacher: ModelDeployment
    served_model_name: str = Field(
        "distill",
        pattern=r"^[A-Za-z0-9._:/-]{1,64}$",
        description="model id clients send; '<name>-student' / '<name>-teacher' pin one model",
    )
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    limits: Limits = Field(default_factory=Limits)
    max_tokens_limit: int = Field(256, ge=1, le=8192, description="largest max_tokens accepted")
    default_max_tokens: int = Field(64, ge=1, description="max_tokens when a request gives none")
    default_temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="temperature when a request gives none (0 = greedy)"
    )
    context_limit: int = Field(
        2048, ge=16, description="prompt tokens + max_tokens must fit (also capped by the model)"
    )
    router_replicas: int = Field(1, ge=1, le=16, description="replicas of the HTTP router")
    router_num_cpus: float = Field(0.1, gt=0, description="Ray CPUs per router replica")
    tracking_uri: str | None = Field(
        None, description="MLflow URI: resolves models:/ refs and records the deployment as a run"
    )
    experiment: str = Field("distill-serve", description="MLflow experiment of deployment runs")
    request_log: RequestLogConfig | None = Field(
        None, description="Parquet log of answered requests, for `distill monitor` (unset = off)"
    )

    @model_validator(mode="after")
    def _limits(self) -> ServeArgs:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} exceeds "
                f"max_tokens_limit {self.max_tokens_limit}"
            )
        if self.max_tokens_limit >= self.context_limit:
            raise ValueError(
                f"max_tokens_limit {self.max_tokens_limit} must be below "
                f"context_limit {self.context_limit} (room for the prompt)"
            )
        for role in ("student", "teacher"):
            ref = getattr(self, role).model
            if ref.startswith("models:/") and not self.tracking_uri:
                raise ValueError(f"{role}.model {ref!r} needs tracking_uri to resolve it")
        if self.cascade.mode == "speculative":
            check_speculative_pair(self.student.engine, self.teacher.engine, self.cascade)
        return self

    def draft(self, student_path: str) -> dict[str, Any] | None:
        """What the teacher's engine drafts with when ``cascade.mode`` is speculative: the
        student (its engine, directory and dtype); None otherwise."""
        if self.cascade.mode != "speculative":
            return None
        s = self.student
        return {"engine": s.engine, "path": str(student_path), "dtype": s.dtype}

    def model_names(self) -> dict[str, str]:
        """Model id clients may send -> which route answers (cascade, student or teacher)."""
        n = self.served_model_name
        return {n: "cascade", f"{n}-student": "student", f"{n}-teacher": "teacher"}


def check_speculative_pair(student: str, teacher: str, cascade: CascadeConfig) -> None:
    """``cascade.mode: speculative`` needs a teacher engine that verifies and a student engine that
    drafts (``VERIFY_ENGINES`` / ``DRAFT_ENGINES``), or vLLM for both (its ``speculative_config``)."""
    where = "cascade.mode speculative"
    if teacher == "vllm" or student == "vllm":
        if teacher != student:
            raise ValueError(
                f"{where}: student.engine {student} with teacher.engine {teacher}: vLLM drafts "
                "inside the teacher's own engine, so both must be engine vllm"
            )
        if cascade.speculative.draft_tokens == "auto":
            raise ValueError(
                f"{where}: cascade.speculative.draft_tokens: vLLM takes a fixed number of draft "
                f"tokens (num_speculative_tokens): set 1..{MAX_DRAFT_TOKENS}"
            )
        return
    if teacher not in VERIFY_ENGINES:
        raise ValueError(
            f"{where}: teacher.engine {teacher} cannot verify draft tokens (it needs one forward "
            f"over several tokens per row, with rollback): use teacher.engine "
            f"{' or '.join(VERIFY_ENGINES)}"
        )
    if student not in DRAFT_ENGINES:
        raise ValueError(
            f"{where}: student.engine {student} cannot draft: use one of {', '.join(DRAFT_ENGINES)}"
        )
