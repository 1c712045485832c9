"""OpenAI-style server-sent events for a finished generation (``data: {...}`` ... ``[DONE]``).

Streaming with a cascade: the student generates fully first (its confidence needs every token),
the Router decides, and only then is the chosen answer streamed, one chunk per token. So the
first chunk arrives after the whole answer exists: streaming keeps client compatibility and the
headers (``x-distill-model``) are known up front, but it does not lower time-to-first-token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any


def sse(obj: dict[str, Any] | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n"


def completion_chunks(
    rid: str, model: str, gen: dict[str, Any], usage: dict, distill: dict
) -> Iterator[str]:
    created = int(time.time())
    base = {"id": rid, "object": "text_completion", "created": created, "model": model}
    for piece in gen["pieces"]:
        choice = {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
        yield sse({**base, "choices": [choice]})
    last = {"index": 0, "text": "", "finish_reason": gen["finish_reason"], "logprobs": None}
    yield sse({**base, "choices": [last], "usage": usage, "distill": distill})
    yield sse("[DONE]")


def chat_chunks(
    rid: str, model: str, gen: dict[str, Any], usage: dict, distill: dict
) -> Iterator[str]:
    created = int(time.time())
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    yield sse({**base, "choices": [first]})
    for piece in gen["pieces"]:
        choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        yield sse({**base, "choices": [choice]})
    last = {"index": 0, "delta": {}, "finish_reason": gen["finish_reason"]}
    yield sse({**base, "choices": [last], "usage": usage, "distill": distill})
    yield sse("[DONE]")
