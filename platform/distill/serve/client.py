"""How the Router reaches a model: a stream of engine chunks.

``ServeModelClient`` talks to distill's ``ModelServer`` replicas through a deployment handle
(engines hf / onnxruntime-genai, ``placement: replica``); ``LocalModelClient`` to an engine the
Router replica holds itself (``placement: router``); ``engines.vllm.VLLMModelClient`` to a Ray
Serve LLM deployment. All turn the model's refusals
into :class:`~distill.serve.cascade.RequestFailed` (400 for a prompt the model cannot take, 503
when it is at capacity) and cancel the generation when the stream is closed early::

    client = ServeModelClient(handle, "student")
    gen = client.open({"prompt": "def f(", "params": {"max_tokens": 8}})
    async for chunk in gen: ...
    await gen.aclose()        # before the end: cancels the replica's generation
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from distill.serve.cascade import RequestFailed


def refusal(item: dict[str, Any]) -> RequestFailed:
    """A model's ``{"error": message, "status": 400 | 503}`` item as the Router's error."""
    return RequestFailed(int(item.get("status", 400)), str(item["error"]))


class ServeModelClient:
    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle.options(stream=True)
        self.info_handle = handle
        self.name = name

    async def open(self, payload: dict[str, Any]) -> AsyncIterator[Any]:
        from ray.serve.exceptions import BackPressureError

        gen = self.handle.generate.remote(payload)
        done = False
        try:
            async for item in gen:
                if isinstance(item, dict) and "error" in item:
                    done = True
                    raise refusal(item)
                yield item
                if item.finish_reason:
                    done = True
                    return
        except BackPressureError as e:
            done = True
            raise RequestFailed(503, f"the {self.name} is at capacity ({e})") from None
        finally:
            if not done:
                gen.cancel()

    async def info(self) -> dict[str, Any]:
        return await self.info_handle.info.remote()

    def check_health(self) -> None:
        """Serve health-checks the model's own replicas."""

    def close(self) -> None:
        """Nothing held here: the replicas are Serve's."""


class LocalModelClient:
    """``placement: router``: the engine runs inside the Router replica (the onnxruntime-genai
    engine computes in a child process of it), so a token reaches the HTTP response without a
    hop through another Serve replica and Ray's streaming generator."""

    def __init__(self, host: Any, name: str) -> None:
        self.host = host  # a distill.serve.deployments.ModelHost
        self.name = name

    async def open(self, payload: dict[str, Any]) -> AsyncIterator[Any]:
        gen = self.host.generate(payload)
        try:
            async for item in gen:
                if isinstance(item, dict) and "error" in item:
                    raise refusal(item)
                yield item
                if item.finish_reason:
                    return
        finally:
            await gen.aclose()  # cancels the generation unless it finished

    async def info(self) -> dict[str, Any]:
        return self.host.info()

    def check_health(self) -> None:
        self.host.check_health()

    def close(self) -> None:
        self.host.close()
