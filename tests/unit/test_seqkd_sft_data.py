"""Completion-only loss masking, padding and packing of SFT rows."""

from __future__ import annotations

import numpy as np
import pytest

from distill.seqkd.sft_data import IGNORE, answer_text, build_rows, encode_example


@pytest.fixture(scope="module")
def tok(tiny_gqa):
    from distill.models.loader import load_tokenizer

    return load_tokenizer(tiny_gqa.path)


ROW = {"prompt": "Write a function that adds.", "completion": "def add(a, b):\n    return a + b"}


def test_labels_cover_the_completion_only(tok):
    ids, labels = encode_example(tok, ROW, chat_template=True)
    n_prompt = sum(v == IGNORE for v in labels)
    prompt_ids = tok.apply_chat_template(
        [{"role": "user", "content": ROW["prompt"]}], tokenize=False, add_generation_prompt=True
    )
    assert n_prompt == len(tok(prompt_ids, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]  # every answer token is learned
    answer = tok.decode(ids[n_prompt:])
    assert answer.startswith(ROW["completion"]) and answer.endswith("<|im_end|>")
    assert answer_text(tok, ROW, True) == ROW["completion"] + "<|im_end|>"
    # without a template: prompt text then completion + eos
    ids2, labels2 = encode_example(tok, ROW, chat_template=False)
    assert tok.decode([t for t, lab in zip(ids2, labels2, strict=True) if lab != IGNORE]).endswith(
        tok.eos_token
    )


def test_padding_and_packing(tok):
    ex = [encode_example(tok, {**ROW, "completion": f"x = {i}"}, True) for i in range(5)]
    lens = [len(i) for i, _ in ex]
    seq_len = max(lens) * 2 + 1
    padded, st = build_rows(ex, seq_len, tok.pad_token_id, packing=False)
    assert padded["input_ids"].shape == (5, seq_len) and st["rows"] == 5
    for k in range(5):
        n = lens[k]
        assert padded["attention_mask"][k].sum() == n
        assert (padded["labels"][k, n:] == IGNORE).all()
        assert (padded["input_ids"][k, n:] == tok.pad_token_id).all()
    packed, st = build_rows(ex, seq_len, tok.pad_token_id, packing=True)
    assert st["rows"] == 3  # two whole examples per row, never split across rows
    assert packed["attention_mask"].sum() == sum(lens)
    assert st["label_tokens"] == st["label_tokens"] == int((padded["labels"] != IGNORE).sum())
    np.testing.assert_array_equal(
        packed["input_ids"][0, : lens[0] + lens[1]], np.array(ex[0][0] + ex[1][0])
    )


def test_too_long_examples_truncated_or_dropped(tok):
    ids, labels = encode_example(tok, ROW, True)
    n_prompt = sum(v == IGNORE for v in labels)
    rows, st = build_rows([(ids, labels)], n_prompt + 2, tok.pad_token_id)
    assert st["truncated"] == 1 and st["rows"] == 1 and st["label_tokens"] == 2
    rows, st = build_rows([(ids, labels)], n_prompt, tok.pad_token_id)
    assert st["dropped_too_long"] == 1 and st["rows"] == 0


def test_completion_loss_ignores_prompt_tokens(tiny_gqa, tok):
    import torch

    from distill.models.loader import load_causal_lm
    from distill.seqkd.completion_loss import completion_loss

    model = load_causal_lm(tiny_gqa.path)
    ex = [encode_example(tok, ROW, True)]
    rows, _ = build_rows(ex, 96, tok.pad_token_id, packing=False)
    base = completion_loss(model, rows)
    changed = {k: v.copy() for k, v in rows.items()}
    n_prompt = int((rows["labels"][0] == IGNORE).sum() - (rows["attention_mask"][0] == 0).sum())
    changed["input_ids"][0, 1 : n_prompt - 2] = 7  # edit prompt tokens only: loss changes ...
    assert completion_loss(model, changed) != pytest.approx(base)
    with torch.no_grad():  # ... and equals the HF loss, which ignores the same -100 labels
        hf = model(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in rows.items()}).loss
    assert float(hf) == pytest.approx(base, rel=1e-5)


def test_sft_rows_parquet_round_trip(tok, tmp_path):
    from distill.seqkd.sft_data import read_sft_rows, write_sft_rows

    rows, _ = build_rows([encode_example(tok, ROW, True)] * 3, 64, tok.pad_token_id, False)
    write_sft_rows(tmp_path / "train.parquet", rows)
    back = read_sft_rows(tmp_path / "train.parquet")
    for k, v in rows.items():
        np.testing.assert_array_equal(back[k], v)
    assert not list(tmp_path.glob(".*.tmp"))
