"""The peers of ``benchmarks/kd_vs_trl.py``: TRL's GKDTrainer (KD, off- and on-policy) and
SFTTrainer (CE), run the way a user would (``pip install -e .[bench]``), with a held-out
perplexity curve.

Not a library module: ``kd_vs_trl.py`` runs each method in its own process so peak RSS and
start-up are measured per method. The curve callback times training on its own clock: the
time spent evaluating is subtracted, as in distill's loop (``train_seconds``); with a
``seconds`` budget it stops training once that clock passes it. Tokens are the real tokens
of the batches the loss sees (on-policy steps: prompt + sampled completion, counted in
``compute_loss`` after GKD has swapped them in), as distill counts them.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np


def heldout_ppl(model: Any, rows: np.ndarray, batch_size: int = 4) -> float:
    """Mean next-token NLL over ``rows`` (the same formula as distill's loop), as perplexity."""
    import torch

    was_training = model.training
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids = torch.as_tensor(rows[i : i + batch_size], dtype=torch.long)
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            ).item()
            n += ids[:, 1:].numel()
    model.train(was_training)
    return math.exp(min(nll / max(n, 1), 50.0))


def _curve_callback(
    heldout: np.ndarray, every: int, total: int, curve: list, seconds: float | None = None
):
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = 0.0
            self.eval_s = 0.0

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
            step = state.global_step
            t = time.perf_counter()
            train_s = t - self.t0 - self.eval_s
            out_of_time = seconds is not None and train_s >= seconds
            if out_of_time:
                control.should_training_stop = True
            if not (out_of_time or step == total or (every and step % every == 0)):
                return
            curve.append(
                {"step": step, "train_seconds": train_s, "ppl": heldout_ppl(model, heldout)}
            )
            self.eval_s += time.perf_counter() - t

    return Curve()


def _collate_fn(prompt_tokens: int | None):
    """Rows as GKD wants them: the row (offline steps) and its first tokens as the prompt
    (on-policy / seq-KD steps sample a completion of it); ``None``: the rows only (SFT)."""

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids = torch.as_tensor(np.stack([f["input_ids"] for f in features]), dtype=torch.long)
        am = torch.ones_like(ids)
        batch = {"input_ids": ids, "attention_mask": am, "labels": ids.clone()}
        if prompt_tokens is not None:
            batch["prompts"] = ids[:, :prompt_tokens]
            batch["prompt_attention_mask"] = am[:, :prompt_tokens]
        return batch

    return collate


def _count_tokens(trainer: Any, counter: list[int]) -> None:
    """Count the real tokens of every batch the loss sees (wraps the instance's compute_loss)."""
    inner = trainer.compute_loss

    def compute_loss(model, inputs, *a, **kw):  # noqa: ANN001
        counter[0] += int(inputs["attention_mask"].sum())
        return inner(model, inputs, *a, **kw)

    trainer.compute_loss = compute_loss


def run_trl(method: str, prep: Path, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Train ``prep/pruned`` on ``prep/train.parquet`` with TRL; returns the curve and timings.

    ``method``: ``trl_gkd`` (GKDTrainer, λ=0 so no on-policy generation, β=0 = forward KL,
    T=1, full teacher logits every step), ``trl_gkd_onpolicy`` (λ, β from ``opts``: a share λ
    of the steps trains on the student's samples of the rows' first ``prompt_tokens``),
    ``trl_gkd_seqkd`` (the same, the other steps on the teacher's samples: ``seq_kd``) or
    ``trl_sft`` (SFTTrainer, CE on the same rows). ``opts["seconds"]``: a training-clock
    budget; ``opts["schedule"]``: ``cosine`` or ``constant`` (after warmup).
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.data.packed import read_rows

    train = read_rows(prep / "train.parquet")
    held = read_rows(prep / "heldout.parquet")
    tok = AutoTokenizer.from_pretrained(prep / "pruned")
    student = AutoModelForCausalLM.from_pretrained(prep / "pruned", dtype="float32")
    ds = Dataset.from_dict({"input_ids": [r.tolist() for r in train]})
    common = {
        "output_dir": str(out / "trl"),
        "per_device_train_batch_size": opts["batch_size"],
        "gradient_accumulation_steps": 1,
        "max_steps": opts["steps"],
        "learning_rate": opts["lr"],
        "lr_scheduler_type": (
            "cosine" if opts.get("schedule", "cosine") == "cosine" else "constant_with_warmup"
        ),
        "warmup_steps": opts["warmup"],
        "max_grad_norm": 1.0,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "seed": opts["seed"],
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "max_length": train.shape[1],
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
    }
    curve: list[dict[str, float]] = []
    cb = _curve_callback(held, opts["eval_every"], opts["steps"], curve, opts.get("seconds"))
    gkd = method.startswith("trl_gkd")
    collate = _collate_fn(opts.get("prompt_tokens", 64) if gkd else None)
    if gkd:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        teacher = AutoModelForCausalLM.from_pretrained(opts["teacher"], dtype="float32")
        on = method != "trl_gkd"
        args = GKDConfig(
            **common,
            lmbda=opts["lmbda"] if on else 0.0,
            beta=opts["beta"] if on else 0.0,
            temperature=opts.get("temperature", 1.0),
            max_new_tokens=opts.get("max_new_tokens", 32),
            seq_kd=method == "trl_gkd_seqkd",
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            data_collator=collate,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[cb],
        )
    else:
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, packing=False)
        trainer = SFTTrainer(
            model=student,
            args=args,
            data_collator=collate,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[cb],
        )
    tokens = [0]
    _count_tokens(trainer, tokens)
    random.seed(opts["seed"])  # GKD draws its on-policy steps from `random`
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    trainer.save_model(str(out / "student"))
    tok.save_pretrained(out / "student")
    train_s = curve[-1]["train_seconds"]
    return {
        "curve": curve,
        "train_seconds": train_s,
        "train_wall_seconds": wall,
        "steps": curve[-1]["step"],
        "tokens": tokens[0],
        "tokens_per_s": tokens[0] / train_s,
        "student": str(out / "student"),
        "order": "TRL RandomSampler (seed 0)",
    }
