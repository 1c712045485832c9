"""An exported runtime seen as a torch model: evaluate's generation checks answer through it and
stop where the export says the model ends (the eos ids of its genai_config)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from distill.eval.generation import generate_answers
from distill.models.loader import load_tokenizer
from distill.runtime.torch_adapter import engine_as_torch


class ScriptedEngine:
    """Emits all of ``script`` for every prompt: where the answer ends is the caller's rule."""

    def __init__(self, script: list[int], eos_ids: set[int], vocab: int) -> None:
        self.script, self.eos_ids, self.vocab, self.pad_id = script, frozenset(eos_ids), vocab, 0

    def logits(self, rows: np.ndarray) -> np.ndarray:
        return np.zeros((*rows.shape, self.vocab), dtype=np.float32)

    def generate_steps(self, prompts, max_new_tokens, temperature=0.0, return_logits=False):
        for t in self.script[:max_new_tokens]:
            logits = np.zeros((len(prompts), self.vocab), dtype=np.float32)
            logits[:, t] = 10.0
            ids = np.full(len(prompts), t)
            yield SimpleNamespace(token_ids=ids, logits=logits if return_logits else None)


def test_an_engine_model_answers_and_stops_at_its_declared_eos(tiny_gqa):
    tok = load_tokenizer(tiny_gqa.path)
    words = tok("alpha beta gamma", add_special_tokens=False)["input_ids"]
    eos = 3  # declared by the export only, not the tokenizer's eos
    assert eos not in words and eos != tok.eos_token_id
    engine = ScriptedEngine([*words, eos, *words], {eos}, len(tok))
    model = engine_as_torch(engine)
    assert model.generation_config.eos_token_id == [eos]

    answers = generate_answers(model, tok, [{"prompt": "def f():"}, {"prompt": "x = 1"}], 16, 2)

    assert [a.text.strip() for a in answers] == ["alpha beta gamma"] * 2
    assert [a.finish_reason for a in answers] == ["stop"] * 2
