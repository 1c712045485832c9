"""The HTTP ingress: an OpenAI-compatible FastAPI app in front of the Student and the Teacher.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream with
``"stream": true``), ``GET /v1/models``, ``GET /v1/stats``, ``GET /healthz``. The cascade settings
arrive as the Router's ``user_config`` (``reconfigure``): ``args.cascade`` in the deploy config, or
a ``deployments: [{name: Router, user_config: {cascade: {...}}}]`` override applied live by
``serve deploy`` without reloading models. A request may override them for itself with
``"distill": {"threshold": 0.3}`` (the openai client's ``extra_body``)::

    curl -s 127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
         -d '{"model": "distill", "prompt": "def add(a, b):", "max_tokens": 16}'

A request goes through named phases: ``_read`` (body size, JSON, schema), ``_plan`` (model route,
limits, unsupported fields: all before any tokenization), ``_admit`` (at most
``limits.max_inflight`` at once, else 503 + Retry-After), ``start_answer`` (the cascade), then a
whole or streamed response. Every request, whatever its end, is accounted for once in
:meth:`Router._account`.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations as classes.

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from distill.monitor.log import open_request_log
from distill.serve.cascade import Answer, ModelStream, RequestFailed, Timeouts, start_answer
from distill.serve.client import LocalModelClient, ServeModelClient
from distill.serve.config import CascadeConfig, ServeArgs
from distill.serve.deployments import ModelHost
from distill.serve.engines.vllm import VLLMModelClient
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
from distill.serve.sse import Formatter
from distill.serve.stats import RequestRecord, ServeMetrics, Stats

api = FastAPI(title="distill", description="student/teacher cascade, OpenAI-compatible")


@api.exception_handler(RequestFailed)
async def _failed(request: Request, exc: RequestFailed) -> JSONResponse:
    return _error_response(exc)


def _error_response(exc: RequestFailed, retry_after: int = 1) -> JSONResponse:
    kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    headers = {"retry-after": str(retry_after)} if exc.status in (429, 503) else None
    body = error_body(exc.message, kind, exc.param)
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _headers(info: dict[str, Any]) -> dict[str, str]:
    conf = info.get("confidence")
    return {
        "x-distill-model": info["answered_by"],
        "x-distill-confidence": "" if conf is None else f"{conf:.6f}",
        "x-distill-fallback": str(bool(info["fallback"])).lower(),
    }


def _make_client(
    handle: DeploymentHandle | None, role: str, args: ServeArgs, path: str, draft: dict | None
):
    dep = getattr(args, role)
    if dep.placement == "router":  # the engine lives in this Router replica
        spec = dep.model_dump(mode="json")
        host = ModelHost(role, path, spec, args.context_limit, draft)
        return LocalModelClient(host, role)
    if dep.engine == "vllm":
        return VLLMModelClient(handle, role, path, args.context_limit)
    return ServeModelClient(handle, role)


def _fill(rec: RequestRecord, info: dict[str, Any], usage: dict[str, int]) -> None:
    rec.info = info
    rec.answered_by = info["answered_by"]
    rec.confidence = info.get("confidence")
    rec.fallback = bool(info["fallback"])
    rec.reason = info.get("reason")
    rec.model_ms = dict(info.get("latency_ms", {}))
    rec.segments = list(info.get("segments", []))
    rec.prompt_tokens = usage["prompt_tokens"]
    rec.completion_tokens = usage["completion_tokens"]
    spec = info.get("speculative") or {}
    rec.draft_tokens = int(spec.get("draft_tokens") or 0)
    rec.accepted_tokens = int(spec.get("accepted_tokens") or 0)


async def _chain(first: str, rest):
    yield first
    async for item in rest:
        yield item


@serve.deployment
@serve.ingress(api)
class Router:
    def __init__(
        self,
        student: DeploymentHandle | None,
        teacher: DeploymentHandle | None,
        args: dict,
        paths: dict[str, str],
        draft: dict | None = None,
    ) -> None:
        self.args = ServeArgs.model_validate(args)
        self.draft = (
            draft  # the teacher drafts with the student (built in cascade.mode speculative)
        )
        self.clients = {
            "student": _make_client(student, "student", self.args, paths["student"], None),
            "teacher": _make_client(teacher, "teacher", self.args, paths["teacher"], draft),
        }
        self.cascade = self.args.cascade
        self.limits = self.args.limits
        self.timeouts = Timeouts(self.limits.first_token_timeout_s, self.limits.request_timeout_s)
        self.names = self.args.model_names()
        self.created = int(time.time())
        self.inflight = 0
        self.stats = Stats()
        self.metrics = ServeMetrics()
        self.request_log = open_request_log(self.args.request_log)  # distill monitor reads it

    def check_health(self) -> None:
        """Serve's periodic health check: an engine this replica hosts must be alive."""
        for client in self.clients.values():
            client.check_health()

    def __del__(self) -> None:
        for client in getattr(self, "clients", {}).values():
            client.close()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config: {cascade: {threshold: 0.3, scoring: entropy, ...}}``. ``mode:
        speculative`` only if the app was built with it (the teacher loads the draft then)."""
        cascade = CascadeConfig.model_validate((user_config or {}).get("cascade", {}))
        if cascade.mode == "speculative" and self.draft is None:
            raise ValueError(
                "cascade.mode speculative: this app was built without a draft model; set "
                "args.cascade.mode: speculative and deploy again (the teacher loads the student)"
            )
        self.cascade = cascade

    # -- the one place every request is accounted for ------------------------------------------
    def _account(self, rec: RequestRecord) -> None:
        """Called once per request, whatever its outcome (stats, metrics; monitoring hooks)."""
        self.stats.record(rec)
        self.metrics.record(rec)
        if self.request_log is not None and rec.status == 200 and rec.info is not None:
            usage = {"prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens}
            self.request_log.record(rec.route, rec.info, usage, rec.latency_ms, rec.payload)

    # -- phases ---------------------------------------------------------------------------------
    async def _read(self, request: Request, schema: type[BaseModel]) -> Any:
        """The body, size-capped before it is parsed, validated against ``schema``."""
        cap = self.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise RequestFailed(413, f"request body is {declared} bytes; the limit is {cap}")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > cap:
                raise RequestFailed(413, f"request body exceeds the limit of {cap} bytes")
        try:
            return schema.model_validate_json(bytes(body))
        except ValidationError as e:
            errors = e.errors()
            status = 400 if any(x.get("type") == "json_invalid" for x in errors) else 422
            loc = errors[0].get("loc", ()) if errors else ()
            param = str(loc[0]) if loc else None
            raise RequestFailed(status, validation_message(errors), param) from None

    def _plan(self, req: Any, chat: bool) -> tuple[str, dict[str, Any], CascadeConfig]:
        """Route, limits and generation params; raises RequestFailed (4xx) before any work."""
        route = self.names.get(req.model)
        if route is None:
            names = ", ".join(self.names)
            raise RequestFailed(
                400, f"unknown model {req.model!r}: this server has {names}", "model"
            )
        bad = req.unsupported()
        if bad:
            raise RequestFailed(400, bad[1], bad[0])
        lim = self.limits
        field = "messages" if chat else "prompt"
        if chat and len(req.messages) > lim.max_messages:
            raise RequestFailed(
                400, f"{len(req.messages)} messages; the limit is {lim.max_messages}", "messages"
            )
        chars = req.text_chars()
        if chars > lim.max_prompt_chars:
            raise RequestFailed(
                400, f"{field} is {chars} characters; the limit is {lim.max_prompt_chars}", field
            )
        if any(len(s) > lim.max_stop_chars for s in req.stop_list()):
            raise RequestFailed(
                400, f"stop strings are limited to {lim.max_stop_chars} characters", "stop"
            )
        max_tokens = req.max_tokens or self.args.default_max_tokens
        if max_tokens > self.args.max_tokens_limit:
            raise RequestFailed(
                400,
                f"max_tokens {max_tokens} exceeds this server's limit of "
                f"{self.args.max_tokens_limit}",
                "max_tokens",
            )
        logprobs, top = req.want_logprobs()
        temperature = req.temperature
        params = {
            "max_tokens": max_tokens,
            "temperature": self.args.default_temperature if temperature is None else temperature,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "stop": req.stop_list(),
            "seed": req.seed,
            "presence_penalty": req.presence_penalty,
            "frequency_penalty": req.frequency_penalty,
            "logit_bias": req.logit_bias,
            "logprobs": logprobs,
            "top_logprobs": top,
        }
        payload: dict[str, Any] = {"params": params}
        if chat:
            payload["messages"] = [m.for_template() for m in req.messages]
        else:
            payload["prompt"] = req.prompt
        cascade = self.cascade
        if req.distill is not None:
            over = req.distill.model_dump(exclude_none=True)
            k = over.pop("draft_tokens", None)
            cascade = cascade.model_copy(update=over)
            if k is not None:
                spec = cascade.speculative.model_copy(update={"draft_tokens": k})
                cascade = cascade.model_copy(update={"speculative": spec})
        return route, payload, cascade

    def _admit(self) -> None:
        if self.inflight >= self.limits.max_inflight:
            raise RequestFailed(
                503, f"server at capacity ({self.inflight} requests in flight); retry shortly"
            )
        self.inflight += 1

    def _opener(self, role: str, payload: dict[str, Any]):
        client = self.clients[role]

        def open_(extra: dict[str, Any] | None) -> ModelStream:
            return ModelStream(role, client.open({**payload, **(extra or {})}), self.timeouts)

        return open_

    # -- the two completion endpoints -------------------------------------------------------------
    async def _serve(self, request: Request, chat: bool):
        t0 = time.perf_counter()
        rec = RequestRecord(route="-", status=200)
        admitted = streaming = False
        answer: Answer | None = None
        try:
            req = await self._read(request, ChatCompletionRequest if chat else CompletionRequest)
            rec.stream = bool(req.stream)
            route, payload, cascade = self._plan(req, chat)
            rec.route, rec.payload = route, payload
            self._admit()
            admitted = True
            open_s, open_t = self._opener("student", payload), self._opener("teacher", payload)
            answer = await start_answer(route, open_s, open_t, cascade)
            fmt = Formatter(
                "chat" if chat else "completion",
                new_id("chatcmpl" if chat else "cmpl"),
                req.model,
                logprobs=req.want_logprobs()[0],
            )
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                body = self._sse(answer, fmt, include_usage, rec, t0)
                streaming = True  # from here on the body generator owns the cleanup
                first = await anext(body)  # started, so its cleanup runs even if never resumed
                return StreamingResponse(
                    _chain(first, body),
                    media_type="text/event-stream",
                    headers=_headers(answer.info),
                )
            return await self._whole(answer, fmt, req.model, chat, rec, t0)
        except RequestFailed as e:
            rec.status, rec.error = e.status, e.message
            return _error_response(e, self.limits.retry_after_s)
        except asyncio.CancelledError:
            rec.status, rec.error = 499, "client went away"
            raise
        except Exception as e:  # a model replica failed: a clean error, accounted for
            rec.status, rec.error = 500, f"{type(e).__name__}: {e}"
            return _error_response(RequestFailed(500, f"generation failed: {rec.error}"))
        finally:
            if not streaming:
                if answer is not None:
                    await answer.close()
                if admitted:
                    self.inflight -= 1
                rec.latency_ms = (time.perf_counter() - t0) * 1000
                self._account(rec)

    async def _whole(self, answer: Answer, fmt: Formatter, model: str, chat: bool, rec, t0):
        chunks = [c async for c in answer.chunks()]
        info, usage = answer.final_info(), answer.usage()
        _fill(rec, info, usage)
        choice = fmt.choice(chunks, answer.finish_reason)
        cls = ChatCompletionResponse if chat else CompletionResponse
        body = cls(model=model, choices=[choice], usage=usage, distill=info)
        return JSONResponse(body.model_dump(), headers=_headers(info))

    async def _sse(self, answer: Answer, fmt: Formatter, include_usage: bool, rec, t0):
        try:
            async for chunk in answer.chunks():
                event = fmt.event(chunk)
                if event is not None:
                    if rec.ttft_ms is None and chunk.text:
                        rec.ttft_ms = (time.perf_counter() - t0) * 1000
                    yield event
            info, usage = answer.final_info(), answer.usage()
            _fill(rec, info, usage)
            for line in fmt.end(answer.finish_reason, info, usage, include_usage):
                yield line
        except RequestFailed as e:  # a deadline passed mid-stream
            rec.status, rec.error = e.status, e.message
            for line in fmt.error(e.status, e.message):
                yield line
        except Exception as e:  # a model replica failed mid-stream
            rec.status, rec.error = 500, f"{type(e).__name__}: {e}"
            for line in fmt.error(500, f"generation failed: {rec.error}"):
                yield line
        except (asyncio.CancelledError, GeneratorExit):
            rec.status, rec.error = 499, "client went away"
            raise
        finally:
            await answer.close()
            self.inflight -= 1
            rec.latency_ms = (time.perf_counter() - t0) * 1000
            self._account(rec)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._serve(request, chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._serve(request, chat=True)

    # -- service routes -----------------------------------------------------------------------------
    @api.get("/v1/models")
    async def models(self) -> dict:
        cards = [ModelCard(id=n, created=self.created, route=r) for n, r in self.names.items()]
        return ModelList(data=cards).model_dump()

    @api.get("/v1/stats")
    async def stats_route(self) -> dict:
        out = self.stats.summary(cascade=self.cascade.model_dump())
        out["inflight"] = self.inflight
        return out

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        try:
            s, t = await asyncio.wait_for(
                asyncio.gather(self.clients["student"].info(), self.clients["teacher"].info()), 10
            )
        except Exception as e:
            body = {"status": "unhealthy", "error": f"{type(e).__name__}: {e}"}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "student": s, "teacher": t})
