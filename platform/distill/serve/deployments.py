"""The model deployment (bound as ``Student`` and ``Teacher``) behind the Router.

A model with ``placement: router`` gets no deployment: each Router replica holds a
:class:`ModelHost` for it (``distill.serve.client.LocalModelClient``). Otherwise each replica
holds one engine (``engine:`` of the model in ``deploy/serve.yaml``; continuous
batching over every request the replica holds) and streams ``generate(payload)``: engine
:class:`~distill.serve.engines.base.Chunk` s as tokens are produced, or one
``{"error": message, "status": 400 | 503}`` for a request this model cannot serve (prompt too long
for the context, no chat template, waiting queue full). Cancelling the stream (the Router's client
went away, a timeout) cancels the generation and frees its batch slot::

    handle = serve.get_deployment_handle("Student", app_name="distill").options(stream=True)
    async for chunk in handle.generate.remote({"prompt": "def f(", "params": {"max_tokens": 8}}):
        ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve

from distill.serve.config import ModelDeployment
from distill.serve.engines import DraftSpec, EngineOptions, build_engine
from distill.serve.engines.base import (
    Overloaded,
    PromptError,
    SamplingParams,
    Speculation,
)

PARAM_KEYS = (
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
)


def sampling_params(p: dict[str, Any]):
    """The Router's ``params`` dict -> engine SamplingParams."""

    kw = {k: p[k] for k in PARAM_KEYS if p.get(k) is not None}
    bias = tuple((int(t), float(b)) for t, b in (p.get("logit_bias") or {}).items())
    return SamplingParams(**kw, stop=tuple(p.get("stop") or ()), logit_bias=bias)


class ModelHost:
    """One model's engine and its request contract, wherever it runs: in a ``ModelServer``
    replica (``placement: replica``) or inside each Router replica (``placement: router``,
    :class:`~distill.serve.client.LocalModelClient`)."""

    def __init__(
        self,
        role: str,
        path: str,
        spec: dict[str, Any],
        context_limit: int,
        draft: dict[str, Any] | None = None,
    ) -> None:
        dep = ModelDeployment.model_validate(spec)
        self.role = role
        self.path = path
        self.context_limit = context_limit
        options = EngineOptions(
            device=dep.device,
            dtype=dep.dtype,
            threads=dep.threads,
            batching=dep.batching,
            kwargs=dict(dep.engine_kwargs),
        )
        draft_spec = None
        if (
            draft is not None
        ):  # cascade.mode speculative: this teacher verifies the student's drafts
            draft_spec = DraftSpec(
                draft["engine"], Path(draft["path"]), draft.get("dtype", "float32"), context_limit
            )
        self.engine = build_engine(dep.engine, Path(path), options, draft_spec)

    def check_health(self) -> None:
        """Serve's periodic health check: a dead engine loop gets the replica replaced."""
        self.engine.check_health()

    def info(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "path": self.path,
            "engine": self.engine.kind,
            "max_context": min(self.context_limit, self.engine.max_context),
            "stats": self.engine.stats(),
        }

    async def generate(self, payload: dict[str, Any]) -> AsyncIterator[Any]:
        try:
            req = self.engine.prepare(
                payload.get("prompt"),
                payload.get("messages"),
                sampling_params(payload.get("params", {})),
                payload.get("continue_ids"),
                self.context_limit,
                int(payload.get("continue_emitted", 0)),
            )
            req = self._speculation(req, payload.get("speculative"))
        except PromptError as e:
            yield {"error": str(e), "status": 400}
            return
        stream = self.engine.stream(req)
        try:
            async for chunk in stream:
                yield chunk
        except Overloaded as e:
            yield {"error": f"{self.role} is at capacity: {e}", "status": 503}
        finally:
            await stream.aclose()  # closed early: the engine frees the batch slot now

    def _speculation(self, req: Any, spec: dict[str, Any] | None) -> Any:
        """``payload["speculative"] = {"k": 4 | None, "max_k": 8}``: decode with the draft."""
        from dataclasses import replace

        if spec is None:
            return req
        if not self.engine.can_verify:
            raise PromptError(
                f"the {self.role} was deployed without a draft model: speculative decoding "
                "needs cascade.mode speculative in the deploy config (the draft loads then)"
            )
        return replace(req, speculation=Speculation(spec.get("k"), int(spec.get("max_k", 8))))

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
            self.engine = None

    def __del__(self) -> None:
        self.close()


@serve.deployment
class ModelServer(ModelHost):
    """``placement: replica``: the model in Serve replicas of its own (``Student``,
    ``Teacher``), scaled by ``replicas``; the Router streams from it through a handle."""
