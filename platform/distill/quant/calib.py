"""Calibration rows for GPTQ from the teacher's own generations (``quantize.calib_source:
teacher``; the sweep's "teacher-generated calib" row in ``benchmarks/quantize.py``).

Each sample starts from the first ``prefix_len`` tokens of a TRAIN row and continues with tokens
sampled from the teacher (temperature 1): text from the distribution the student was distilled
towards, rather than the corpus itself::

    rows = teacher_generations(teacher_dir, train_rows, n=16, seq_len=256)   # [16, 256] int64
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.models.loader import load_causal_lm


def teacher_generations(
    teacher_dir: Path,
    train_rows: np.ndarray,
    n: int,
    seq_len: int,
    prefix_len: int = 32,
    batch_size: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """``[n, seq_len]`` token rows: a train prefix + the teacher's sampled continuation."""
    import torch

    flat = np.asarray(train_rows).reshape(-1)
    if len(flat) < n * prefix_len:
        raise ValueError(f"need {n * prefix_len} train tokens for {n} prefixes, have {len(flat)}")
    starts = np.linspace(0, len(flat) - prefix_len, n).astype(int)
    prefixes = np.stack([flat[s : s + prefix_len] for s in starts]).astype(np.int64)
    model = load_causal_lm(teacher_dir)
    torch.manual_seed(seed)
    out = []
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            ids = torch.as_tensor(prefixes[i : i + batch_size])
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=seq_len - prefix_len,
                min_new_tokens=seq_len - prefix_len,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                pad_token_id=0,
            )
            out.append(gen[:, :seq_len].numpy())
    return np.concatenate(out).astype(np.int64)
