"""``engine: vllm``: a model served by Ray Serve LLM (``ray.serve.llm``, vLLM) on a GPU.

The model becomes a Ray Serve LLM ``LLMServer`` deployment (vLLM's continuous batching, paged
attention, CUDA graphs) instead of distill's ``ModelServer``; the Router reaches it through
:class:`VLLMModelClient`, which renders and tokenizes the prompt with the checkpoint's tokenizer
(so a teacher can continue the student's tokens), sends token ids to ``LLMServer.completions`` with
``logprobs`` on, and turns vLLM's stream back into engine chunks. The cascade, limits and OpenAI
layer are the same as for the other engines::

    student: {model: runs/smollm2/student, engine: vllm, num_gpus: 1, device: cuda,
              engine_kwargs: {gpu_memory_utilization: 0.4}}

Needs ``pip install 'ray[llm]'`` (vLLM, CUDA) on the cluster: imports are guarded, and without
them ``build_app`` fails with one message. Limits: the confidence ``entropy`` scoring is estimated
from the top-``ENTROPY_TOP_K`` log-probs vLLM returns (the rest of the vocabulary as one uniform
bucket); a teacher continuing a student prefix receives it as token ids. ``cascade.mode:
speculative`` maps to vLLM's own speculative decoding: the teacher's ``engine_kwargs`` get
``speculative_config: {method: draft_model, model: <student dir>, num_speculative_tokens: k}``
(:func:`speculative_config`), so vLLM drafts with the student inside the teacher's engine; vLLM
reports acceptance in its metrics, not per request. Not run in this
repository's CI (no GPU): ``tests/unit/test_serve_engines.py`` checks the config mapping and the
stream parsing, and skips the deployment test without CUDA.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.models.loader import load_tokenizer
from distill.models.stopping import stop_token_ids
from distill.serve.cascade import RequestFailed
from distill.serve.deployments import sampling_params
from distill.serve.engines.base import Chunk, PromptError
from distill.serve.engines.prompt import PromptBuilder

ENTROPY_TOP_K = 20
INSTALL_HINT = "engine vllm needs Ray Serve LLM and vLLM on a GPU cluster: pip install 'ray[llm]'"


def model_id(role: str) -> str:
    return f"distill-{role}"


def speculative_config(draft: dict[str, Any]) -> dict[str, Any]:
    """vLLM's ``speculative_config`` for ``cascade.mode: speculative``: the student (an HF
    directory) drafts ``num_speculative_tokens`` per step inside the teacher's engine."""
    return {
        "method": "draft_model",
        "model": str(draft["path"]),
        "num_speculative_tokens": int(draft["num_speculative_tokens"]),
    }


def llm_config_kwargs(
    role: str, dep: Any, path: Path, context_limit: int, draft: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``LLMConfig`` arguments for one model deployment (pure, unit-tested without vLLM);
    ``draft``: the teacher's draft model (``ServeArgs.draft``) in speculative mode."""
    engine = {"max_model_len": context_limit, "dtype": dep.dtype, **dep.engine_kwargs}
    if draft is not None:
        if "speculative_config" in engine:
            raise DistillError(
                f"{role}.engine_kwargs.speculative_config: set by cascade.mode speculative "
                "(the student drafts); remove it from engine_kwargs"
            )
        engine["speculative_config"] = speculative_config(draft)
    return {
        "model_loading_config": {"model_id": model_id(role), "model_source": str(path)},
        "engine_kwargs": engine,
        "deployment_config": {
            "num_replicas": dep.replicas,
            "max_ongoing_requests": dep.max_ongoing_requests,
            "max_queued_requests": dep.max_queued_requests,
        },
    }


def vllm_deployment(
    role: str, dep: Any, path: Path, context_limit: int, draft: dict[str, Any] | None = None
):
    """The Ray Serve LLM application for this model (named ``Student`` / ``Teacher``)."""
    try:
        from ray.serve.llm import LLMConfig, build_llm_deployment
    except ImportError as e:
        raise DistillError(f"{INSTALL_HINT} ({e})") from None
    cfg = LLMConfig(**llm_config_kwargs(role, dep, path, context_limit, draft))
    return build_llm_deployment(
        cfg, name_prefix="", override_serve_options={"name": role.capitalize()}
    )


def _entropy(top: dict[str, float], vocab: int) -> float:
    """Normalized entropy estimated from top-k log-probs (the tail as one uniform bucket)."""
    probs = [math.exp(lp) for lp in top.values()]
    h = -sum(p * math.log(p) for p in probs if p > 0)
    tail, rest = max(0.0, 1.0 - sum(probs)), max(1, vocab - len(probs))
    if tail > 0:
        h -= tail * math.log(tail / rest)
    return min(1.0, max(0.0, h / math.log(vocab)))


def _token_id(token: str) -> int:
    return int(token.removeprefix("token_id:"))


def parse_events(item: Any, tok: Any, vocab: int, want_top: int) -> list[Chunk]:
    """vLLM stream items (``data: {...}`` strings, lists of them, error objects) -> chunks."""
    items = item if isinstance(item, list) else [item]
    chunks = []
    for it in items:
        if not isinstance(it, str):
            err = getattr(it, "error", None) or it
            status = int(getattr(err, "code", 0) or getattr(it, "code", 0) or 400)
            raise RequestFailed(status if 400 <= status < 600 else 400, str(err))
        data = it.removeprefix("data: ").strip()
        if not data or data == "[DONE]":
            continue
        obj = json.loads(data)
        if "error" in obj:
            raise RequestFailed(int(obj["error"].get("code") or 400), obj["error"]["message"])
        for choice in obj.get("choices", []):
            lp = choice.get("logprobs") or {}
            ids = [_token_id(t) for t in lp.get("tokens") or []]
            tops = lp.get("top_logprobs") or [{} for _ in ids]
            chunk = Chunk(
                token_ids=ids,
                text=choice.get("text") or "",
                logprobs=list(lp.get("token_logprobs") or []),
                entropies=[_entropy(t or {}, vocab) for t in tops],
                finish_reason=choice.get("finish_reason"),
            )
            chunk.tokens = [tok.decode([i]) for i in ids]
            if want_top:
                chunk.top = [
                    [
                        (tok.decode([_token_id(t)]), v)
                        for t, v in list((top or {}).items())[:want_top]
                    ]
                    for top in tops
                ]
            chunks.append(chunk)
    return chunks


class VLLMModelClient:
    """The Router's view of a Ray Serve LLM deployment (same contract as ServeModelClient)."""

    def __init__(self, handle: Any, role: str, path: Path, context_limit: int) -> None:
        tok = load_tokenizer(Path(path))
        self.handle = handle.options(stream=True)
        self.name = role
        self.context_limit = context_limit
        self.vocab = len(tok)
        self.prompts = PromptBuilder(tok, context_limit, role)
        self.stop_ids = stop_token_ids(tok)  # vLLM adds the model's own eos ids

    def request(self, payload: dict[str, Any]) -> tuple[Any, int, int]:
        """(vLLM CompletionRequest, prompt tokens, top_logprobs) for a Router payload."""
        from ray.serve.llm.openai_api_models import CompletionRequest

        params = sampling_params(payload.get("params", {}))
        cont = list(payload.get("continue_ids") or [])
        try:
            req = self.prompts.prepare(
                payload.get("prompt"), payload.get("messages"), params, cont, self.context_limit
            )
        except PromptError as e:
            raise RequestFailed(400, str(e)) from None
        body = CompletionRequest(
            model=model_id(self.name),
            prompt=req.input_ids,
            max_tokens=max(1, params.max_tokens - len(cont)),
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            stop_token_ids=self.stop_ids,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            logit_bias={str(t): b for t, b in params.logit_bias} or None,
            logprobs=max(ENTROPY_TOP_K, params.top_logprobs),
            return_tokens_as_token_ids=True,
            stream=True,
        )
        return body, len(req.prompt_ids), params.top_logprobs

    async def open(self, payload: dict[str, Any]) -> AsyncIterator[Chunk]:
        body, prompt_tokens, top = self.request(payload)
        gen = self.handle.completions.remote(body)
        done, first = False, True
        try:
            async for item in gen:
                for chunk in parse_events(item, self.prompts.tok, self.vocab, top):
                    if first:
                        chunk.prompt_tokens, first = prompt_tokens, False
                    yield chunk
                    if chunk.finish_reason:
                        done = True
                        return
        finally:
            if not done:
                gen.cancel()

    async def info(self) -> dict[str, Any]:
        return {"role": self.name, "engine": "vllm", "max_context": self.context_limit}

    def check_health(self) -> None:
        """Serve health-checks the LLMServer replicas."""

    def close(self) -> None:
        """Nothing held here: the replicas are Serve's."""
