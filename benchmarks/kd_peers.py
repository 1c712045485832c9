"""The peers of ``benchmarks/kd_vs_trl.py``: TRL's GKDTrainer (KD) and SFTTrainer (CE), run the
way a user would (``pip install -e .[bench]``), with a held-out perplexity curve.

Not a library module: ``kd_vs_trl.py`` runs each method in its own process so peak RSS and
start-up are measured per method. The curve callback times training on its own clock: the
time spent evaluating is subtracted, as in distill's loop (``train_seconds``).
"""

from __future__ import annotations

import math
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


def _curve_callback(heldout: np.ndarray, every: int, total: int, curve: list):
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = 0.0
            self.eval_s = 0.0

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
            step = state.global_step
            if step % every and step != total:
                return
            t = time.perf_counter()
            train_s = t - self.t0 - self.eval_s
            curve.append(
                {"step": step, "train_seconds": train_s, "ppl": heldout_ppl(model, heldout)}
            )
            self.eval_s += time.perf_counter() - t

    return Curve()


def _collate(features: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    ids = torch.as_tensor(np.stack([f["input_ids"] for f in features]), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def run_trl(method: str, prep: Path, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Train ``prep/pruned`` on ``prep/train.parquet`` with TRL; returns the curve and timings.

    ``method``: ``trl_gkd`` (GKDTrainer, λ=0 so no on-policy generation, β=0 = forward KL,
    T=1, full teacher logits every step) or ``trl_sft`` (SFTTrainer, CE on the same rows).
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
        "lr_scheduler_type": "cosine",
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
    cb = _curve_callback(held, opts["eval_every"], opts["steps"], curve)
    if method == "trl_gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        teacher = AutoModelForCausalLM.from_pretrained(opts["teacher"], dtype="float32")
        args = GKDConfig(**common, lmbda=0.0, beta=0.0, temperature=1.0, seq_kd=False)
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            data_collator=_collate,
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
            data_collator=_collate,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[cb],
        )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    trainer.save_model(str(out / "student"))
    tok.save_pretrained(out / "student")
    train_s = curve[-1]["train_seconds"]
    tokens = opts["steps"] * opts["batch_size"] * train.shape[1]
    return {
        "curve": curve,
        "train_seconds": train_s,
        "train_wall_seconds": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / train_s,
        "student": str(out / "student"),
        "order": "TRL RandomSampler (seed 0), one epoch",
    }
