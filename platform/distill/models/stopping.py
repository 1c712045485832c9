"""Where an answer ends: the one stop rule evaluate, seq-KD generation and every serve engine
use, so an evaluated answer ends where the served one does::

    stop = stop_token_ids(tok, model.generation_config.eos_token_id, model.config.eos_token_id)

The rule: every end-of-sequence id the model declares (its generation config, its config, an
exported runtime's), the tokenizer's ``eos_token_id``, and the ChatML end-of-turn token
``<|im_end|>`` when the tokenizer has it (a chat model that ends its turn has answered).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

END_OF_TURN = "<|im_end|>"


def stop_token_ids(tok: Any, *declared: int | Iterable[int] | None) -> list[int]:
    """The sorted stop ids for tokenizer ``tok`` and the eos ids a model declares."""
    ids: set[int] = set()
    for eos in (*declared, tok.eos_token_id):
        if eos is None:
            continue
        ids.update([eos] if isinstance(eos, int) else eos)
    end_of_turn = tok.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end_of_turn, int) and end_of_turn != tok.unk_token_id:
        ids.add(end_of_turn)
    return sorted(int(i) for i in ids)
