"""The HTTP ingress: an OpenAI-compatible FastAPI app in front of the Student and the Teacher.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream with
``"stream": true``), ``GET /v1/models``, ``GET /v1/stats``, ``GET /healthz``. The cascade settings
arrive as the Router's ``user_config`` (``reconfigure``): ``args.cascade`` in the deploy config, or
a ``deployments: [{name: Router, user_config: {cascade: {...}}}]`` override applied live by
``serve deploy`` without reloading models. A request may override them for itself with
``"distill": {"threshold": 0.3}`` (the openai client's ``extra_body``)::

    curl -s 127.0.0.1:8000/v1/completions -H 'content-type: application/json' \
         -d '{"model": "distill", "prompt": "def add(a, b):", "max_tokens": 16}'
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations as classes.

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from distill.monitor.log import open_request_log
from distill.serve.cascade import RequestFailed, run_cascade
from distill.serve.config import CascadeConfig, ServeArgs
from distill.serve.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    error_body,
    new_id,
    validation_message,
)
from distill.serve.sse import chat_chunks, completion_chunks
from distill.serve.stats import ServeMetrics, Stats

api = FastAPI(title="distill", description="student/teacher cascade, OpenAI-compatible")


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    return JSONResponse(error_body(validation_message(errors)), status_code=status)


@api.exception_handler(RequestFailed)
async def _failed(request: Request, exc: RequestFailed) -> JSONResponse:
    return JSONResponse(error_body(exc.message), status_code=exc.status)


def _headers(info: dict[str, Any]) -> dict[str, str]:
    conf = info.get("confidence")
    return {
        "x-distill-model": info["answered_by"],
        "x-distill-confidence": "" if conf is None else f"{conf:.6f}",
        "x-distill-fallback": str(bool(info["fallback"])).lower(),
    }


@serve.deployment
@serve.ingress(api)
class Router:
    def __init__(self, student: DeploymentHandle, teacher: DeploymentHandle, args: dict) -> None:
        self.student = student
        self.teacher = teacher
        self.args = ServeArgs.model_validate(args)
        self.cascade = self.args.cascade
        self.names = self.args.model_names()
        self.created = int(time.time())
        self.stats = Stats()
        self.metrics = ServeMetrics()
        self.request_log = open_request_log(self.args.request_log)  # distill monitor reads it

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config: {cascade: {threshold: 0.3, scoring: entropy, ...}}``."""
        self.cascade = CascadeConfig.model_validate((user_config or {}).get("cascade", {}))

    def _fail(self, status: int, message: str) -> RequestFailed:
        self.stats.record_error(status)
        self.metrics.error(status)
        return RequestFailed(status, message)

    async def _answer(self, req: CompletionRequest | ChatCompletionRequest, chat: bool):
        route = self.names.get(req.model)
        if route is None:
            raise self._fail(
                400, f"unknown model {req.model!r}: this server has {', '.join(self.names)}"
            )
        max_tokens = req.max_tokens or self.args.default_max_tokens
        if max_tokens > self.args.max_tokens_limit:
            raise self._fail(
                400,
                f"max_tokens {max_tokens} exceeds this server's limit of "
                f"{self.args.max_tokens_limit}",
            )
        params = {
            "max_tokens": max_tokens,
            "temperature": self.args.default_temperature
            if req.temperature is None
            else req.temperature,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "stop": req.stop_list(),
            "seed": req.seed,
        }
        payload: dict[str, Any] = {"params": params}
        if chat:
            payload["messages"] = [m.model_dump() for m in req.messages]  # type: ignore[union-attr]
        else:
            payload["prompt"] = req.prompt  # type: ignore[union-attr]

        async def student() -> dict[str, Any]:
            return await self.student.generate.remote(payload)

        async def teacher() -> dict[str, Any]:
            return await self.teacher.generate.remote(payload)

        t0 = time.perf_counter()
        cascade = self.cascade
        if req.distill is not None:
            cascade = cascade.model_copy(update=req.distill.model_dump(exclude_none=True))
        try:
            out = await run_cascade(route, student, teacher, cascade)
        except RequestFailed as e:
            raise self._fail(e.status, e.message) from None
        total_ms = (time.perf_counter() - t0) * 1000
        info = {**out.info, "latency_ms": out.model_ms}
        self.stats.record_answer(
            route, info["answered_by"], info["reason"], info["fallback"], out.model_ms, total_ms
        )
        self.metrics.answer(route, info["answered_by"], info["fallback"], out.model_ms)
        g = out.generation
        usage = {
            "prompt_tokens": g["prompt_tokens"],
            "completion_tokens": g["completion_tokens"],
            "total_tokens": g["prompt_tokens"] + g["completion_tokens"],
        }
        if self.request_log is not None:
            self.request_log.record(route, info, usage, total_ms, payload)
        return g, info, usage

    @api.post("/v1/completions")
    async def completions(self, req: CompletionRequest):
        g, info, usage = await self._answer(req, chat=False)
        if req.stream:
            chunks = completion_chunks(new_id("cmpl"), req.model, g, usage, info)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=_headers(info))
        choice = {"index": 0, "text": g["text"], "finish_reason": g["finish_reason"]}
        body = CompletionResponse(model=req.model, choices=[choice], usage=usage, distill=info)
        return JSONResponse(body.model_dump(), headers=_headers(info))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, req: ChatCompletionRequest):
        g, info, usage = await self._answer(req, chat=True)
        if req.stream:
            chunks = chat_chunks(new_id("chatcmpl"), req.model, g, usage, info)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=_headers(info))
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": g["text"]},
            "finish_reason": g["finish_reason"],
        }
        body = ChatCompletionResponse(model=req.model, choices=[choice], usage=usage, distill=info)
        return JSONResponse(body.model_dump(), headers=_headers(info))

    @api.get("/v1/models")
    async def models(self) -> dict:
        cards = [ModelCard(id=n, created=self.created, route=r) for n, r in self.names.items()]
        return ModelList(data=cards).model_dump()

    @api.get("/v1/stats")
    async def stats_route(self) -> dict:
        return self.stats.summary(cascade=self.cascade.model_dump())

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        try:

            async def info(handle: DeploymentHandle) -> dict:
                return await handle.info.remote()

            s, t = await asyncio.wait_for(
                asyncio.gather(info(self.student), info(self.teacher)), 10
            )
        except Exception as e:
            body = {"status": "unhealthy", "error": f"{type(e).__name__}: {e}"}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "student": s, "teacher": t})
