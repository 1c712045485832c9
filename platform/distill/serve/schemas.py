"""OpenAI-compatible request / response schemas (pydantic), plus distill's answer metadata.

Every field of OpenAI's completions and chat-completions requests is accepted (``openai`` 3.x
sends them as its users set them); a field that is not in OpenAI's schema is a 422 naming it. The
standard fields this server cannot honour (``n > 1``, ``echo``, ``suffix``, tools, a JSON
``response_format``, audio...) are a 400 naming the field (:meth:`_Request.unsupported`), never
silently ignored. A request may carry a ``distill`` object overriding the cascade for itself;
responses mirror OpenAI's with one extra field ``distill``::

    {"choices": [...], "usage": {...},
     "distill": {"answered_by": "student", "confidence": 0.71, "fallback": false, ...}}
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distill.serve.config import check_draft_tokens

ACCEPTED_IGNORED = "accepted for compatibility; has no effect here"


class CascadeOverride(BaseModel):
    """Per-request cascade settings (``extra_body={"distill": {"threshold": 0.3}}``)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, ge=0.0, le=1.0)
    scoring: Literal["mean_logprob", "min_prob", "entropy", "quantile"] | None = None
    quantile: float | None = Field(None, ge=0.0, le=1.0)
    fallback: bool | None = None
    decide_after_tokens: int | None = Field(None, ge=1, le=4096)
    takeover: Literal["prompt", "prefix"] | None = None
    draft_tokens: int | Literal["auto"] | None = Field(
        None, description="cascade.mode speculative: tokens drafted per step (1..16) or auto"
    )

    @field_validator("draft_tokens")
    @classmethod
    def _draft_tokens(cls, v: int | str | None) -> int | str | None:
        return check_draft_tokens(v)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = Field(None, description=ACCEPTED_IGNORED)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(..., min_length=1, description="served model id (GET /v1/models)")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings")
    seed: int | None = Field(
        None, ge=-(2**63), lt=2**64, description="sampling seed (reproducible answers)"
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, description="choices per prompt (only 1 is served)")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, description="token id -> bias in [-100, 100]")
    user: str | None = Field(None, description=ACCEPTED_IGNORED)
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

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return None
        if len(v) > 1024:
            raise ValueError(f"at most 1024 entries, got {len(v)}")
        for k, b in v.items():
            if not k.isdigit():
                raise ValueError(f"keys are token ids, got {k!r}")
            if not -100 <= b <= 100:
                raise ValueError(f"bias of token {k} must be in [-100, 100], got {b}")
        return v

    def stop_list(self) -> list[str]:
        return list(self.stop or [])

    def unsupported(self) -> tuple[str, str] | None:
        """(field, message) of the first standard field this server cannot honour."""
        if (self.n or 1) > 1:
            return "n", f"n={self.n}: this server returns one choice per request; send n requests"
        if self.stream_options is not None and not self.stream:
            return "stream_options", "stream_options is only allowed when stream is true"
        return None

    def want_logprobs(self) -> tuple[bool, int]:
        """(return token log-probs, alternatives per token)."""
        return False, 0


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(..., description="one prompt (a list of one is accepted)")
    logprobs: int | None = Field(None, ge=0, le=5, description="top alternatives per token")
    echo: bool | None = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

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

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo is not supported by this server"
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported by this server"
        if self.best_of not in (None, 1, self.n):
            return "best_of", f"best_of={self.best_of}: only best_of == n is supported"
        return super().unsupported()

    def want_logprobs(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0

    def text_chars(self) -> int:
        return len(self.prompt)  # type: ignore[arg-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, description=ACCEPTED_IGNORED)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    def for_template(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="alias of max_tokens")
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    metadata: dict[str, str] | None = Field(None, description=ACCEPTED_IGNORED)
    store: bool | None = Field(None, description=ACCEPTED_IGNORED)
    service_tier: str | None = Field(None, description=ACCEPTED_IGNORED)
    reasoning_effort: str | None = Field(None, description=ACCEPTED_IGNORED)
    verbosity: str | None = Field(None, description=ACCEPTED_IGNORED)
    prompt_cache_key: str | None = Field(None, description=ACCEPTED_IGNORED)
    prompt_cache_options: dict[str, Any] | None = Field(None, description=ACCEPTED_IGNORED)
    prompt_cache_retention: str | None = Field(None, description=ACCEPTED_IGNORED)
    safety_identifier: str | None = Field(None, description=ACCEPTED_IGNORED)
    moderation: Any = Field(None, description=ACCEPTED_IGNORED)
    web_search_options: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _messages(self) -> ChatCompletionRequest:
        if not any(m.text().strip() for m in self.messages):
            raise ValueError("messages are empty (every content is blank)")
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def unsupported(self) -> tuple[str, str] | None:
        checks = [
            ("tools", bool(self.tools), "tool calling is not supported by this server"),
            ("functions", bool(self.functions), "function calling is not supported"),
            ("tool_choice", self.tool_choice not in (None, "none"), "no tools to choose"),
            ("function_call", self.function_call not in (None, "none"), "no functions"),
            (
                "response_format",
                self.response_format is not None and self.response_format.type != "text",
                "only {'type': 'text'} is supported (no JSON mode)",
            ),
            ("modalities", self.modalities not in (None, ["text"]), "only text output"),
            ("audio", self.audio is not None, "audio output is not supported"),
            ("prediction", self.prediction is not None, "predicted outputs are not supported"),
            ("web_search_options", self.web_search_options is not None, "no web search"),
            (
                "top_logprobs",
                bool(self.top_logprobs) and not self.logprobs,
                "top_logprobs needs logprobs: true",
            ),
        ]
        for name, bad, message in checks:
            if bad:
                return name, f"{name}: {message}"
        return super().unsupported()

    def want_logprobs(self) -> tuple[bool, int]:
        return bool(self.logprobs), self.top_logprobs or 0

    def text_chars(self) -> int:
        return sum(len(m.text()) for m in self.messages)


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
    quantile: float | None = Field(None, description="q when scoring is quantile")
    threshold: float
    latency_ms: dict[str, float] = Field(default_factory=dict, description="per model")
    segments: list[dict[str, Any]] = Field(
        default_factory=list, description="which model wrote which tokens, in order"
    )
    discarded_tokens: int = Field(0, description="student tokens dropped on a takeover")
    speculative: dict[str, Any] | None = Field(
        None,
        description="cascade.mode speculative: draft_tokens (the student drafted and the teacher "
        "verified), accepted_tokens (kept), acceptance_rate",
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[dict[str, Any]]
    usage: Usage
    distill: DistillInfo


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[dict[str, Any]]
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
