"""evaluate_models on fake models with known logits: every metric against its direct formula."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill.eval.metrics import evaluate_models


class _Fixed(torch.nn.Module):
    """A model whose logits are a fixed function of the input token (a random table)."""

    def __init__(self, seed: int, vocab: int = 11) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g) * 2)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.table[input_ids])


def test_every_metric_matches_its_direct_formula():
    rows = np.random.default_rng(0).integers(0, 11, (6, 9))
    teacher, student = _Fixed(0), _Fixed(1)
    out = evaluate_models({"teacher": teacher, "student": student}, rows, 4, "teacher")

    ids = torch.as_tensor(rows)
    labels = ids[:, 1:]
    with torch.no_grad():
        lt = torch.log_softmax(teacher(ids).logits[:, :-1], -1)
        ls = torch.log_softmax(student(ids).logits[:, :-1], -1)
    nll = -ls.gather(-1, labels.unsqueeze(-1)).mean().item()
    kl = (lt.exp() * (lt - ls)).sum(-1).mean().item()
    s = out["student"]
    assert s["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert s["next_token_accuracy"] == pytest.approx((ls.argmax(-1) == labels).float().mean())
    assert s["agreement"] == pytest.approx((ls.argmax(-1) == lt.argmax(-1)).float().mean())
    assert s["kl_to_reference"] == pytest.approx(kl, rel=1e-5)
    assert s["eval_tokens"] == labels.numel()
    assert "kl_to_reference" not in out["teacher"]


def test_a_model_identical_to_the_reference_is_zero_kl_and_full_agreement():
    rows = np.random.default_rng(1).integers(0, 11, (5, 7))
    out = evaluate_models({"teacher": _Fixed(3), "copy": _Fixed(3)}, rows, 2, "teacher")
    assert out["copy"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-9)
    assert out["copy"]["agreement"] == 1.0
