"""Top-k extraction, encodings, fidelity (vs brute force) and temperature targets over top-k."""

import math

import numpy as np
import pytest
import torch

from distill.labels.scorer import TeacherScorer
from distill.labels.topk import decode_logprobs, encode_logprobs, fidelity, topk_with_tail
from distill.losses.targets import (
    student_bucket_logprobs,
    tail_mass_from_logprobs,
    topk_target_logprobs,
)


@pytest.fixture(scope="module")
def tiny_logits(tiny_gqa, tiny_rows):
    """Real logits of the tiny teacher on 2 rows: ``[2, 64, 512]``."""
    from distill.models.loader import load_causal_lm

    model = load_causal_lm(tiny_gqa.path)
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(tiny_rows[:2], dtype=torch.long)).logits


def test_topk_with_tail_matches_float64(tiny_logits):
    ids, lp, tail = topk_with_tail(tiny_logits, 8)
    full = torch.log_softmax(tiny_logits.double(), -1)
    ref = full.topk(8, -1)
    assert torch.equal(ids, ref.indices)
    assert torch.allclose(lp.double(), ref.values, atol=1e-5)
    rest = 1 - ref.values.exp().sum(-1)
    assert torch.allclose(tail.double(), rest, atol=1e-6)
    assert (lp[..., :-1] >= lp[..., 1:]).all()  # sorted, so a prefix is the top-k'


def test_topk_rejects_k_above_vocab():
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        topk_with_tail(torch.zeros(2, 5), 6)


def test_tail_is_accurate_when_tiny():
    logits = torch.tensor([[30.0, 0.0, 0.0, 0.0]])
    _, _, tail = topk_with_tail(logits, 1)
    exact = 3 * math.exp(-30) / (1 + 3 * math.exp(-30))
    assert tail.item() == pytest.approx(exact, rel=1e-3)  # 1 - Σ in fp32 would give 0


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_encode_decode_error_bound(encoding):
    rng = np.random.default_rng(0)
    lp = -np.sort(rng.exponential(3.0, size=(5, 7, 16)).astype(np.float32), axis=-1)
    enc = encode_logprobs(lp, encoding)
    back = decode_logprobs(enc["topk_logprobs"], enc.get("logprob_scale"))
    if encoding == "float16":
        assert enc["topk_logprobs"].dtype == np.float16 and set(enc) == {"topk_logprobs"}
        assert np.allclose(back, lp, rtol=1e-3, atol=1e-3)
    else:
        assert enc["topk_logprobs"].dtype == np.uint8
        assert enc["logprob_scale"].dtype == np.float16 and enc["logprob_scale"].shape == (5, 7)
        bound = enc["logprob_scale"].astype(np.float32)[..., None] / 2 + 1e-6
        assert (np.abs(back - lp) <= bound).all()


def _brute_fidelity(logits_row: np.ndarray, k: int, encoding: str) -> tuple[float, float]:
    """KL(p ‖ q) and captured mass at one position, straight from the definitions (float64)."""
    z = logits_row.astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    top = np.argsort(-p, kind="stable")[:k]
    enc = encode_logprobs(np.log(p[top])[None].astype(np.float32), encoding)
    stored = decode_logprobs(enc["topk_logprobs"], enc.get("logprob_scale"))[0].astype(np.float64)
    tail = float(np.float16(1 - p[top].sum()))
    q = np.full(len(p), tail / (len(p) - k))
    q[top] = np.exp(stored)
    q /= q.sum()
    return float(np.sum(p * np.log(p / q))), float(p[top].sum())


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_fidelity_matches_brute_force(tiny_logits, encoding):
    k = 8
    flat = tiny_logits.reshape(-1, tiny_logits.shape[-1])[::9]
    ids, lp, tail = topk_with_tail(flat, k)
    enc = encode_logprobs(lp.numpy(), encoding)
    stored = torch.from_numpy(decode_logprobs(enc["topk_logprobs"], enc.get("logprob_scale")))
    tail16 = torch.from_numpy(tail.numpy().astype(np.float16).astype(np.float32))
    kl, mass = fidelity(flat, ids, stored, tail16)
    for i in range(len(flat)):
        ref_kl, ref_mass = _brute_fidelity(flat[i].numpy(), k, encoding)
        assert kl[i].item() == pytest.approx(ref_kl, rel=2e-3, abs=1e-6)
        assert mass[i].item() == pytest.approx(ref_mass, abs=1e-5)
    assert (kl > 0).all() and (mass < 1).all()


def test_fidelity_is_zero_when_k_is_the_vocab():
    logits = torch.randn(4, 6)
    ids, lp, tail = topk_with_tail(logits, 6)
    kl, mass = fidelity(logits, ids, lp, tail)
    assert torch.allclose(kl, torch.zeros(4), atol=1e-6)
    assert torch.allclose(mass, torch.ones(4), atol=1e-6)


def test_scorer_columns_and_fidelity_sample(tiny_gqa, tiny_rows):
    scorer = TeacherScorer(str(tiny_gqa.path), k=4, seq_len=64, fidelity_stride=5, num_threads=1)
    rows = np.array([3, 7])
    out = scorer({"row": rows, "input_ids": tiny_rows[rows]})
    assert out["input_ids"].dtype == np.uint16 and out["topk_ids"].shape == (2, 64, 4)
    assert out["topk_logprobs"].dtype == np.float16 and out["tail_mass"].shape == (2, 64)
    assert np.array_equal(out["input_ids"].astype(np.int32), tiny_rows[rows])
    # the sampled positions are the global token indices divisible by the stride
    flat = rows[:, None] * 64 + np.arange(64)
    assert list(out["_fid_n"]) == list((flat % 5 == 0).sum(1))
    logits = scorer.model(input_ids=torch.as_tensor(tiny_rows[rows], dtype=torch.long)).logits
    for r in range(2):
        sel = np.nonzero(flat[r] % 5 == 0)[0]
        ref = [_brute_fidelity(logits[r, t].detach().numpy(), 4, "float16") for t in sel]
        assert out["_fid_kl"][r] == pytest.approx(sum(x[0] for x in ref), rel=2e-3)
        assert out["_fid_mass"][r] == pytest.approx(sum(x[1] for x in ref), rel=1e-4)


# --- temperature reconstruction over the stored top-k support (distill.losses.targets) ---


def test_t1_target_is_exact_including_tail(tiny_logits):
    ids, lp, tail = topk_with_tail(tiny_logits, 8)
    target = topk_target_logprobs(lp, 1.0, tail)
    full = torch.log_softmax(tiny_logits.double(), -1)
    assert torch.allclose(target[..., :8].double(), full.gather(-1, ids), atol=1e-5)
    rest = torch.logsumexp(full.scatter(-1, ids, float("-inf")), -1)
    assert torch.allclose(target[..., 8].double(), rest, atol=1e-4)
    assert torch.allclose(target.exp().sum(-1), torch.ones(()), atol=1e-5)
    assert torch.allclose(tail_mass_from_logprobs(lp), tail, atol=1e-5)
    # a student equal to the teacher puts the same mass on the same k+1 buckets
    student = student_bucket_logprobs(tiny_logits, ids, 1.0)
    assert torch.allclose(student.exp(), target.exp(), atol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 2.0, 4.0])
def test_t_neq_1_is_softmax_of_full_logits_over_topk_support(tiny_logits, temperature):
    ids, lp, _ = topk_with_tail(tiny_logits, 8)
    target = topk_target_logprobs(lp, temperature)
    ref = torch.log_softmax(tiny_logits.double().gather(-1, ids) / temperature, -1)
    assert torch.allclose(target[..., :8].double(), ref, atol=1e-5)
    assert (target[..., 8].exp() == 0).all()  # the tail bucket is empty at T≠1
    # from the stored float16 log-probs the error stays small
    lp16 = torch.from_numpy(lp.numpy().astype(np.float16).astype(np.float32))
    stored = topk_target_logprobs(lp16, temperature)[..., :8].exp().double()
    assert torch.allclose(stored, ref.exp(), atol=5e-3)
