"""Prompt -> token ids for engines that use the checkpoint's HF tokenizer (HF, ONNX Runtime GenAI).

The length check runs in two steps so an oversized prompt never costs a full tokenization: a
prompt longer than ``budget x (longest token in characters)`` cannot fit and is refused from its
length alone; otherwise it is tokenized and counted::

    prompts = PromptBuilder(tok, max_context=8192, name="student")
    req = prompts.prepare(messages=[{"role": "user", "content": "hi"}], params=params)
"""

from __future__ import annotations

from typing import Any

from distill.serve.engines.base import EngineRequest, PromptError, SamplingParams


def _longest_token_chars(tok: Any) -> int:
    """An upper bound on the characters one token decodes to (byte-level pieces count bytes)."""
    vocab = tok.get_vocab()
    return max((len(piece) for piece in vocab), default=1) or 1


class PromptBuilder:
    def __init__(self, tok: Any, max_context: int, name: str) -> None:
        self.tok = tok
        self.max_context = max_context
        self.name = name
        self.max_token_chars = _longest_token_chars(tok)

    def render(self, prompt: str | None = None, messages: list[dict] | None = None) -> str:
        """The text the model sees: the prompt, or messages through the chat template."""
        if messages is None:
            return prompt or ""
        if not getattr(self.tok, "chat_template", None):
            raise PromptError(f"model {self.name} has no chat template: use /v1/completions")
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prepare(
        self,
        prompt: str | None = None,
        messages: list[dict] | None = None,
        params: SamplingParams | None = None,
        continue_ids: list[int] | None = None,
        context_limit: int = 1 << 30,
        request_id: str = "",
        continue_emitted: int = 0,
    ) -> EngineRequest:
        """Render, check the length, tokenize; ``continue_ids`` extend the prompt (a prefix)."""
        params = params or SamplingParams()
        text = self.render(prompt, messages)
        limit = min(context_limit, self.max_context)
        extra = len(continue_ids or ())
        budget = limit - params.max_tokens - extra
        if budget < 1 or len(text) > budget * self.max_token_chars:
            raise PromptError(
                f"prompt is {len(text)} characters: with max_tokens {params.max_tokens} it "
                f"cannot fit the context limit of {limit} tokens: shorten the prompt or lower "
                "max_tokens"
            )
        ids = list(self.tok(text, add_special_tokens=messages is None)["input_ids"])
        if not ids:
            raise PromptError("prompt is empty after tokenization")
        if len(ids) > budget:
            raise PromptError(
                f"prompt is {len(ids)} tokens; with max_tokens {params.max_tokens} it exceeds "
                f"the context limit of {limit} tokens: shorten the prompt or lower max_tokens"
            )
        return EngineRequest(ids, params, request_id, tuple(continue_ids or ()), continue_emitted)
