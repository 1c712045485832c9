"""SFT rows from (prompt, completion) pairs: chat template, completion-only labels, packing.

Each example is ``prompt tokens + answer tokens``; labels are ``-100`` on the prompt (and on
padding), so the loss is on the teacher's answer only. Rows are ``input_ids``, ``attention_mask``
and ``labels`` (int32 ``[n, seq_len]``), padded or packed::

    ex = [encode_example(tok, row, chat_template=True) for row in kept]
    rows, stats = build_rows(ex, seq_len=256, pad_id=tok.pad_token_id, packing=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import atomic_file
from distill.seqkd.prompts import messages_of, render_prompt

IGNORE = -100
Example = tuple[list[int], list[int]]  # input ids, labels


def uses_template(tokenizer: Any, chat_template: bool) -> bool:
    return bool(chat_template and getattr(tokenizer, "chat_template", None))


def answer_text(tokenizer: Any, row: dict[str, Any], chat_template: bool) -> str:
    """What follows the rendered prompt: the completion plus the template's end of turn."""
    completion = row["completion"]
    if uses_template(tokenizer, chat_template):
        prompt = render_prompt(tokenizer, row, True)
        full = tokenizer.apply_chat_template(
            [*messages_of(row), {"role": "assistant", "content": completion}], tokenize=False
        )
        if full.startswith(prompt):
            return full[len(prompt) :].rstrip("\n")
    return completion + (tokenizer.eos_token or "")


def encode_example(tokenizer: Any, row: dict[str, Any], chat_template: bool) -> Example:
    """``(input_ids, labels)`` with labels = -100 on every prompt token."""
    special = not uses_template(tokenizer, chat_template)
    p_ids = tokenizer(render_prompt(tokenizer, row, chat_template), add_special_tokens=special)[
        "input_ids"
    ]
    a_ids = tokenizer(answer_text(tokenizer, row, chat_template), add_special_tokens=False)[
        "input_ids"
    ]
    return list(p_ids) + list(a_ids), [IGNORE] * len(p_ids) + list(a_ids)


def build_rows(
    examples: Sequence[Example], seq_len: int, pad_id: int, packing: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Pad (one example per row) or pack (several whole examples per row) to ``seq_len``.

    Examples longer than ``seq_len`` are cut at the end; an example whose prompt fills the row
    (no answer token left to learn) is dropped and counted. Packed examples attend to earlier
    ones in the same row (plain packing, as most SFT trainers do by default).
    """
    stats = {"examples": len(examples), "dropped_too_long": 0, "truncated": 0}
    rows: list[tuple[list[int], list[int]]] = []
    cur_ids: list[int] = []
    cur_lab: list[int] = []
    for ids, labels in examples:
        if len(ids) > seq_len:
            stats["truncated"] += 1
            ids, labels = ids[:seq_len], labels[:seq_len]
        if all(v == IGNORE for v in labels[1:]):  # shifted: label 0 is never predicted
            stats["dropped_too_long"] += 1
            continue
        if not packing or len(cur_ids) + len(ids) > seq_len:
            if cur_ids:
                rows.append((cur_ids, cur_lab))
            cur_ids, cur_lab = [], []
        cur_ids = cur_ids + list(ids)
        cur_lab = cur_lab + list(labels)
    if cur_ids:
        rows.append((cur_ids, cur_lab))
    n = len(rows)
    out = {
        "input_ids": np.full((n, seq_len), pad_id, dtype=np.int32),
        "attention_mask": np.zeros((n, seq_len), dtype=np.int32),
        "labels": np.full((n, seq_len), IGNORE, dtype=np.int32),
    }
    for i, (ids, labels) in enumerate(rows):
        out["input_ids"][i, : len(ids)] = ids
        out["attention_mask"][i, : len(ids)] = 1
        out["labels"][i, : len(labels)] = labels
    stats["rows"] = n
    stats["label_tokens"] = int((out["labels"] != IGNORE).sum())
    return out, stats


def write_sft_rows(path: Path, rows: dict[str, np.ndarray]) -> None:
    """``input_ids`` / ``attention_mask`` / ``labels`` as fixed-size int32 lists (temp → rename).

    The file a Ray Train SFT data source would read (one row per packed/padded sequence).
    """

    import pyarrow as pa
    import pyarrow.parquet as pq

    n, seq_len = rows["input_ids"].shape
    cols = {
        k: pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1).astype(np.int32)), seq_len)
        for k, v in rows.items()
    }
    with atomic_file(path) as tmp:
        pq.write_table(pa.table(cols), tmp)


def read_sft_rows(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out = {}
    for k in ("input_ids", "attention_mask", "labels"):
        col = table.column(k).combine_chunks()
        out[k] = col.flatten().to_numpy().reshape(len(col), col.type.list_size).astype(np.int32)
    return out
