"""Typed arguments of the Serve application (the ``args:`` block of ``deploy/serve.yaml``).

Ray validates ``args`` against :class:`ServeArgs` before building anything (typed app builder)::

    serve run deploy/serve.yaml          # or: distill serve deploy/serve.yaml

A model is named by a local HF directory, an MLflow registered version ``models:/NAME/VERSION``
or alias ``models:/NAME@champion`` (resolved through ``tracking_uri``), or ``gguf:default`` (the
packaged SmolLM2 teacher, converted once into ``~/.cache/distill``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.config.base import StrictModel
from distill.lineage.resolve import parse_model_uri
from distill.monitor.config import RequestLogConfig

Scoring = Literal["mean_logprob", "min_prob", "entropy"]
MODEL_REF_HELP = (
    "a local HF directory, 'models:/NAME/VERSION' or 'models:/NAME@ALIAS' (MLflow), "
    "or 'gguf:default'"
)


class ModelDeployment(StrictModel):
    """One model deployment (the student or the teacher)."""

    model: str = Field(..., description=MODEL_REF_HELP)
    replicas: int = Field(1, ge=1, le=64, description="Serve replicas of this deployment")
    num_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved per replica")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs per replica (>0 implies device=cuda)")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where the model runs")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype")
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; unset = max(1, int(num_cpus))"
    )
    max_ongoing_requests: int = Field(
        16, ge=1, description="queued requests per replica (generation itself runs one at a time)"
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
        return self


class CascadeConfig(StrictModel):
    """When the teacher answers instead of the student. Changeable live via ``user_config``."""

    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="student confidence below this -> the teacher answers"
    )
    scoring: Scoring = Field(
        "mean_logprob",
        description="mean_logprob: exp(mean token log-prob); min_prob: lowest token probability; "
        "entropy: 1 - mean normalized entropy of the student's next-token distributions",
    )
    fallback: bool = Field(True, description="false = the student always answers")
    fallback_on_error: bool = Field(
        True, description="the teacher answers when the student fails or times out"
    )
    student_timeout_s: float = Field(30.0, gt=0, description="student generation time limit")


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
        return self

    def model_names(self) -> dict[str, str]:
        """Model id clients may send -> which route answers (cascade, student or teacher)."""
        n = self.served_model_name
        return {n: "cascade", f"{n}-student": "student", f"{n}-teacher": "teacher"}
