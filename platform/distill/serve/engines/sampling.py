"""One decoding step for a batch of sequences with different sampling settings (torch, no Ray).

``logits`` are the model's raw next-token logits ``[batch, vocab]``. The log-probs and entropies
returned (for confidence scores and ``logprobs``) come from these *raw* logits, before penalties,
biases, temperature or top-p, so a cascade's confidence does not depend on how a client samples::

    out = sample_step(logits, [seq.params for seq in rows], [seq.generator for seq in rows],
                      [seq.counts for seq in rows])
    out.ids, out.logprobs, out.entropies, out.top

Greedy rows (temperature 0) take the argmax; the others sample with their own
``torch.Generator`` (seeded per request when the request has a ``seed``). Presence / frequency
penalties follow OpenAI: ``logit[t] -= count[t] * frequency + (count[t] > 0) * presence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from distill.serve.engines.base import SamplingParams


@dataclass
class StepOut:
    ids: list[int]
    logprobs: list[float]
    entropies: list[float]  # normalized by log(vocab), in [0, 1]
    top: list[list[tuple[int, float]]] | None  # per row, when any row asked for alternatives


def _adjusted(logits: torch.Tensor, params: list[SamplingParams], counts: list) -> torch.Tensor:
    """Logits with logit_bias and penalties applied (a copy only when some row needs it)."""
    rows = [i for i, p in enumerate(params) if p.logit_bias or p.penalized]
    if not rows:
        return logits
    out = logits.clone()
    for i in rows:
        p = params[i]
        out[i] = biased(out[i], p)
        if p.penalized and counts[i] is not None:
            c = counts[i]
            out[i] -= c * p.frequency_penalty + (c > 0).to(out.dtype) * p.presence_penalty
    return out


def sampling_probs(rows: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The distribution a sampled row draws from: softmax of ``rows / temperature`` (``[..., vocab]``),
    cut to the top-``top_p`` nucleus (the most likely token always kept) and renormalized."""
    import torch

    probs = torch.softmax(rows.float() / p.temperature, -1)
    if p.top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < p.top_p
    cut = torch.zeros_like(probs).scatter(-1, order, torch.where(keep, sorted_p, 0.0))
    return cut / cut.sum(-1, keepdim=True)


def _sample_row(row: torch.Tensor, p: SamplingParams, generator) -> int:
    import torch

    return int(torch.multinomial(sampling_probs(row, p), 1, generator=generator))


def sample_step(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list,
    counts: list | None = None,
) -> StepOut:
    """Choose one token per row; return it with its raw log-prob and the step's entropy."""
    logits = logits.float()
    counts = counts or [None] * len(params)
    adjusted = _adjusted(logits, params, counts)
    ids = adjusted.argmax(-1).tolist()
    for i, p in enumerate(params):
        if p.temperature > 0:
            ids[i] = _sample_row(adjusted[i], p, generators[i])
    out = score_tokens(logits, ids, max((p.top_logprobs for p in params), default=0))
    for i, p in enumerate(params):
        if p.penalized and counts[i] is not None:
            counts[i][ids[i]] += 1
    return out


def biased(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """``logits`` (``[..., vocab]``) with the request's ``logit_bias`` added (no penalties)."""
    if not p.logit_bias:
        return logits
    out = logits.clone()
    for tok, bias in p.logit_bias:
        if 0 <= tok < out.shape[-1]:
            out[..., tok] += bias
    return out


def score_tokens(logits: torch.Tensor, ids: list[int], top_k: int = 0) -> StepOut:
    """Raw log-prob of each chosen token, normalized entropy of each row of ``logits``
    (``[n, vocab]``), and the ``top_k`` alternatives per row."""
    import torch

    logp = torch.log_softmax(logits.float(), -1)
    entropy = -(logp.exp() * logp).nan_to_num().sum(-1) / math.log(logits.shape[-1])
    idx = torch.tensor(ids, dtype=torch.long).view(-1, 1)
    chosen = logp.gather(-1, idx).squeeze(-1).tolist()
    top = None
    if top_k:
        vals, toks = logp.topk(top_k, dim=-1)
        top = [
            list(zip(t.tolist(), v.tolist(), strict=True)) for t, v in zip(toks, vals, strict=True)
        ]
    return StepOut(list(ids), chosen, entropy.clamp(0, 1).tolist(), top)
