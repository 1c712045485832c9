"""OpenAI-compatible request / response schemas (pydantic), plus distill's answer metadata.

Requests reject unknown fields (a typo is an error, not silently ignored) and may carry a
``distill`` object overriding the cascade for that request; responses mirror
OpenAI's (id, object, created, model, choices, usage) with one extra field ``distill``::

    {"choices": [...], "usage": {...},
     "distill": {"answered_by": "student", "confidence": 0.71, "fallback": false, ...}}
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class CascadeOverride(BaseModel):
    """Per-request cascade settings (``extra_body={"distill": {"threshold": 0.3}}``)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, ge=0.0, le=1.0)
    scoring: Literal["mean_logprob", "min_prob", "entropy"] | None = None
    fallback: bool | None = None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(..., min_length=1, description="served model id (GET /v1/models)")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings")
    seed: int | None = Field(None, ge=0, description="sampling seed (reproducible answers)")
    stream: bool = False
    stream_options: dict[str, Any] | None = Field(None, description="accepted, ignored")
    n: int = Field(1, ge=1, le=1, description="only 1 choice is supported")
    user: str | None = None
    distill: CascadeOverride | None = Field(None, description="per-request cascade settings")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stops

    def stop_list(self) -> list[str]:
        return list(self.stop or [])


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(..., description="one prompt (a list of one is accepted)")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError(f"exactly one prompt per request is supported, got {len(v)}")
            v = v[0]
        if not v.strip():
            raise ValueError("prompt is empty")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="alias of max_tokens")

    @model_validator(mode="after")
    def _messages(self) -> ChatCompletionRequest:
        if not any(m.content.strip() for m in self.messages):
            raise ValueError("messages are empty (every content is blank)")
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DistillInfo(BaseModel):
    answered_by: Literal["student", "teacher"]
    confidence: float | None = Field(None, description="the student's confidence, if it ran")
    fallback: bool
    reason: str
    scoring: str
    threshold: float
    latency_ms: dict[str, float] = Field(default_factory=dict, description="per model")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    distill: DistillInfo


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    distill: DistillInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "distill"
    route: str = Field(..., description="cascade | student | teacher")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None):
    """OpenAI's error envelope (the ``openai`` client reads ``error.message``)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": None}}


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One readable line from pydantic / FastAPI validation errors: 'body.max_tokens: ...'."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif e.get("type") == "json_invalid":
            msg = f"invalid JSON ({e.get('ctx', {}).get('error', msg)})"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or "invalid request"
