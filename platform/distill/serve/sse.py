"""OpenAI wire format of engine chunks: server-sent events and ``logprobs`` blocks.

Chunks are sent as the models produce them (``data: {...}`` per engine chunk, ``data: [DONE]`` at
the end). The last content event carries ``finish_reason`` and distill's answer metadata; the
usage event (``choices: []``) is only sent when the request asked for it with
``stream_options.include_usage``, as OpenAI does::

    fmt = Formatter("chat", rid, "smollm2-distilled", logprobs=True)
    yield fmt.event(chunk)  ...  yield from fmt.end("stop", info, usage, include_usage=True)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any


def sse(obj: dict[str, Any] | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n"


class Formatter:
    """Turns chunks into OpenAI completion / chat objects (streamed or whole)."""

    def __init__(self, kind: str, rid: str, model: str, logprobs: bool = False) -> None:
        self.kind = kind  # "completion" | "chat"
        self.logprobs = logprobs
        self.base = {
            "id": rid,
            "object": "text_completion" if kind == "completion" else "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.offset = 0  # characters sent so far (completions' text_offset)
        self.started = False

    # -- logprobs -------------------------------------------------------------------------
    def logprobs_block(self, chunks: list[Any]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        tokens, lps, tops = [], [], []
        for c in chunks:
            tokens += c.tokens or []
            lps += c.logprobs[: len(c.tokens or [])]
            tops += c.top or [[] for _ in c.tokens or []]
        if self.kind == "chat":
            content = [
                {
                    "token": t,
                    "logprob": lp,
                    "bytes": list(t.encode()),
                    "top_logprobs": [
                        {"token": a, "logprob": alp, "bytes": list(a.encode())} for a, alp in top
                    ],
                }
                for t, lp, top in zip(tokens, lps, tops, strict=False)
            ]
            return {"content": content, "refusal": None}
        offsets = []
        for t in tokens:
            offsets.append(self.offset)
            self.offset += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": lps,
            "top_logprobs": [dict(top) for top in tops] if any(tops) else None,
            "text_offset": offsets,
        }

    # -- streaming ------------------------------------------------------------------------
    def _choice(self, text: str | None, finish: str | None, lp: Any = None) -> dict[str, Any]:
        if self.kind == "completion":
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": lp}
        delta: dict[str, Any] = {}
        if not self.started:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        self.started = True
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": lp}

    def event(self, chunk: Any) -> str | None:
        """One SSE event for a chunk (None when it adds nothing a client would see)."""
        lp = self.logprobs_block([chunk])
        if not chunk.text and lp is None and self.started:
            return None
        return sse({**self.base, "choices": [self._choice(chunk.text, None, lp)]})

    def end(
        self, finish: str | None, info: dict[str, Any], usage: dict, include_usage: bool
    ) -> Iterator[str]:
        yield sse({**self.base, "choices": [self._choice(None, finish)], "distill": info})
        if include_usage:
            yield sse({**self.base, "choices": [], "usage": usage})
        yield sse("[DONE]")

    def error(self, status: int, message: str) -> Iterator[str]:
        """A mid-stream failure (a deadline passed): OpenAI's error object, then the end."""
        yield sse({"error": {"message": message, "type": "server_error", "code": status}})
        yield sse("[DONE]")

    # -- whole responses -------------------------------------------------------------------
    def choice(self, chunks: list[Any], finish: str | None) -> dict[str, Any]:
        text = "".join(c.text for c in chunks)
        lp = self.logprobs_block(chunks)
        if self.kind == "completion":
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": lp}
        message = {"role": "assistant", "content": text, "refusal": None}
        return {"index": 0, "message": message, "finish_reason": finish, "logprobs": lp}
