import json

import torch

from distill.models.loader import count_parameters, load_causal_lm, load_tokenizer


def test_tiny_checkpoint_loads_and_generates(tiny_gqa):
    cfg = json.loads((tiny_gqa.path / "config.json").read_text())
    assert cfg["num_key_value_heads"] == 2 and cfg["vocab_size"] == 512
    model = load_causal_lm(tiny_gqa.path)
    tok = load_tokenizer(tiny_gqa.path)
    ids = tok("def main():", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    assert count_parameters(model) > 0
    assert torch.isfinite(model(ids).logits).all()


def test_tiny_rows(tiny_rows):
    assert tiny_rows.dtype.name == "int32" and tiny_rows.max() < 512
