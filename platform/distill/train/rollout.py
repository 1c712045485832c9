"""On-policy rollouts: which steps are on-policy, and the student's batched, KV-cached samples.

A step ``s`` is on-policy when ``⌊(s+1)·λ⌋ > ⌊s·λ⌋`` (``λ = distill.on_policy.lmbda``): exactly
``⌊n·λ⌋`` of the first ``n`` steps, spread evenly, step 0 off-policy for ``λ < 1``. The choice and
the sampling seed are functions of the step, so a resumed run samples what an uninterrupted one
would. The prompts are the first ``prompt_tokens`` tokens of the step's own train rows (the data
position stays a function of the step, ``distill.train.data``)::

    roll = sample(student, prompts, max_new_tokens=32, temperature=1.0, stop_ids=[eos],
                  pad_id=eos, generator=step_generator(seed, step, rank, j))
    loss, parts = total_loss(spec, student_out, roll.input_ids, roll.attention_mask, roll.labels,
                             teacher_out=teacher(roll.input_ids, roll.attention_mask))

``Rollout.labels`` is ``-100`` on the prompt and after a row's first stop token, so the loss
counts exactly the generated positions (``distill.losses.shift_for_next_token``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def is_on_policy(step: int, lmbda: float) -> bool:
    """Whether optimizer step ``step`` (0-based) samples from the student."""
    if lmbda <= 0:
        return False
    if lmbda >= 1:
        return True
    return math.floor((step + 1) * lmbda) > math.floor(step * lmbda)


def step_generator(
    seed: int, step: int, rank: int, micro: int, device: Any = "cpu"
) -> torch.Generator:
    """The sampling RNG of one micro-batch: a function of (seed, step, rank, micro-batch)."""
    state = np.random.SeedSequence([seed, step, rank, micro]).generate_state(1, np.uint64)[0]
    g = torch.Generator(device=device)
    g.manual_seed(int(state) & ((1 << 63) - 1))
    return g


@dataclass
class Rollout:
    """Prompt + sampled completion rows, ``[B, P + N]`` (``N`` ≤ ``max_new_tokens``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # 0 after a row's first stop token
    labels: torch.Tensor  # -100 on the prompt and after the stop token
    prompt_len: int

    @property
    def generated(self) -> int:
        """Counted (generated) tokens in this rollout."""
        return int((self.labels[:, self.prompt_len :] != -100).sum())

    @property
    def tokens(self) -> int:
        """Real tokens the training forward sees (prompt + counted completion)."""
        return int(self.attention_mask.sum())


@torch.no_grad()
def sample(
    model: Any,
    prompts: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    stop_ids: Sequence[int],
    pad_id: int,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample ``max_new_tokens`` per row at ``temperature`` (full softmax, no top-k / top-p, as
    GKD samples), all rows in one batch with the model's KV cache; stops early once every row
    has emitted a stop token. ``prompts [B, P]`` are equal-length rows (no padding)."""
    was_training = model.training
    model.eval()
    dev = prompts.device
    stops = torch.as_tensor(list(stop_ids), dtype=torch.long, device=dev)
    b = prompts.shape[0]
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    out = model(input_ids=prompts, use_cache=True, logits_to_keep=1)
    past, logits = out.past_key_values, out.logits[:, -1]
    new: list[torch.Tensor] = []
    try:
        for i in range(max_new_tokens):
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            new.append(nxt)
            done |= torch.isin(nxt, stops)
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            out = model(
                input_ids=nxt[:, None], past_key_values=past, use_cache=True, logits_to_keep=1
            )
            past, logits = out.past_key_values, out.logits[:, -1]
    finally:
        model.train(was_training)
    completion = torch.stack(new, dim=1)
    return rollout_rows(prompts, completion, stops)


def rollout_rows(prompts: torch.Tensor, completion: torch.Tensor, stops: torch.Tensor) -> Rollout:
    """Masks of prompt + completion: a completion counts up to and including its first stop."""
    n = completion.shape[1]
    is_stop = torch.isin(completion, stops)
    first = torch.where(
        is_stop.any(1),
        is_stop.int().argmax(1),
        torch.full((completion.shape[0],), n, device=completion.device),
    )
    keep = torch.arange(n, device=completion.device)[None, :] <= first[:, None]
    ids = torch.cat([prompts, completion], dim=1).long()
    am = torch.cat([torch.ones_like(prompts), keep.to(prompts.dtype)], dim=1).long()
    labels = ids.clone()
    labels[:, : prompts.shape[1]] = -100
    labels[am == 0] = -100
    return Rollout(ids, am, labels, prompts.shape[1])
