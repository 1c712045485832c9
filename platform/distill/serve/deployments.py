"""The model deployment (bound twice, as ``Student`` and ``Teacher``) behind the Router.

Each replica loads one HF directory with transformers and answers ``generate(payload)`` with a
plain dict: ``{"ok": Generation}`` or ``{"error": message, "status": 400}`` for a request this
model cannot serve (prompt too long for the context, no chat template)::

    handle = serve.get_deployment_handle("Student", app_name="distill")
    await handle.generate.remote({"prompt": "def f(", "params": {"max_tokens": 8}})
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ray import serve


@serve.deployment
class ModelServer:
    def __init__(
        self,
        role: str,
        path: str,
        device: str = "cpu",
        dtype: str = "float32",
        torch_threads: int = 1,
        context_limit: int = 2048,
    ) -> None:
        from distill.serve.engine import Generator

        self.role = role
        self.context_limit = context_limit
        self.gen = Generator(Path(path), device=device, dtype=dtype, torch_threads=torch_threads)

    def info(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "path": str(self.gen.path),
            "max_context": min(self.context_limit, self.gen.max_context),
        }

    async def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        from distill.serve.engine import GenParams, PromptError

        p = payload.get("params", {})
        params = GenParams(
            max_tokens=int(p.get("max_tokens", 16)),
            temperature=float(p.get("temperature", 0.0)),
            top_p=float(p.get("top_p", 1.0)),
            stop=tuple(p.get("stop") or ()),
            seed=p.get("seed"),
        )
        chat = payload.get("messages") is not None
        try:
            text = self.gen.render(payload.get("prompt"), payload.get("messages"))
            out = await asyncio.to_thread(self.gen.generate, text, params, chat, self.context_limit)
        except PromptError as e:
            return {"error": str(e), "status": 400}
        return {"ok": out.to_dict()}
