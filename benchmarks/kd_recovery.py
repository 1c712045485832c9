"""KD recovery of a depth-pruned SmolLM2-135M: no recovery vs CE-only vs offline top-k KD vs
online full-logit KD, all under the same training-token budget, on Ray Train + DeepSpeed (CPU).

    .venv/bin/python benchmarks/kd_recovery.py            # 48k tokens/method, ~30 min on 2 cores
    .venv/bin/python benchmarks/kd_recovery.py --quick    # 6k tokens/method, a few minutes

The student keeps 14 of the teacher's 30 decoder layers, chosen by block importance
(1 - cos(h_in, h_out) on calibration rows): ~0.58x the parameters. ``distill.prune`` did not
exist when this was written, so the depth pruning is done here (~20 lines).
Prints held-out perplexity, next-token accuracy, top-1 agreement with the teacher, the recovered
fraction of the log-perplexity gap, and training tokens/s (offline vs online).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch


def corpus_rows(tok, seq_len: int, train_rows: int, heldout_rows: int):
    """stdlib docs, split by document (every 10th doc held out), packed to ``seq_len``."""
    from distill.data.corpus import stdlib_files
    from distill.data.packing import pack

    files = stdlib_files()
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files[:600]]
    held = [t for i, t in enumerate(texts) if i % 10 == 0]
    train = [t for i, t in enumerate(texts) if i % 10 != 0]
    enc = lambda ts: tok(ts, add_special_tokens=False)["input_ids"]  # noqa: E731
    return (
        pack(enc(train), seq_len, tok.eos_token_id, max_rows=train_rows),
        pack(enc(held), seq_len, tok.eos_token_id, max_rows=heldout_rows),
    )


def depth_prune(teacher_dir: Path, out: Path, keep: int, calib: np.ndarray) -> Path:
    """Keep the ``keep`` most important decoder layers (1 - cos between a block's in and out)."""
    from distill.models.files import copy_tokenizer_files
    from distill.models.loader import load_causal_lm

    model = load_causal_lm(teacher_dir)
    with torch.no_grad():
        hs = model(input_ids=torch.as_tensor(calib).long(), output_hidden_states=True).hidden_states
    n = model.config.num_hidden_layers
    imp = [1 - torch.cosine_similarity(hs[i], hs[i + 1], dim=-1).mean().item() for i in range(n)]
    kept = sorted(sorted(range(n), key=lambda i: -imp[i])[:keep])
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in kept)
    for new, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new
    model.config.num_hidden_layers = keep
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    copy_tokenizer_files(teacher_dir, out)
    return out


def write_store(root: Path, teacher_dir: Path, rows: np.ndarray, k: int, bs: int = 4) -> float:
    """Soft-label store (distill.labels format) of ``rows``; returns teacher tokens/s."""
    from distill.labels.local import write_local_store

    return write_local_store(root, teacher_dir, rows, k, bs, fingerprint="kd_recovery")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6k tokens/method, seq_len 128")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens per method")
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--keep-layers", type=int, default=14, help="of 30 (14 -> ~0.58x params)")
    ap.add_argument("--k", type=int, default=32, help="top-k of the soft-label store")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2, help="rows per worker per step")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--heldout-rows", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kd_recovery"))
    args = ap.parse_args(argv)
    seq_len = args.seq_len or (128 if args.quick else 256)
    tokens = args.tokens or (6144 if args.quick else 49152)
    heldout_n = args.heldout_rows or (8 if args.quick else 16)

    import ray

    from distill.data.packed import write_rows
    from distill.eval.metrics import evaluate_models
    from distill.models.config import GGUFSource
    from distill.models.loader import (
        count_parameters,
        load_causal_lm,
        load_tokenizer,
        resolve_source,
    )
    from distill.train.config import DistillConfig
    from distill.train.launch import launch
    from distill.train.loop import LoopSpec

    t_start = time.perf_counter()
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    teacher = resolve_source(GGUFSource())
    tok = load_tokenizer(teacher.path)
    per_step = args.batch_size * args.workers * seq_len
    steps = math.ceil(tokens / per_step)
    n_train = steps * args.batch_size * args.workers
    train, held = corpus_rows(tok, seq_len, n_train, heldout_n)
    write_rows(wd / "train.parquet", train)
    write_rows(wd / "heldout.parquet", held)
    pruned = depth_prune(teacher.path, wd / "pruned", args.keep_layers, train[:4])
    t0 = time.perf_counter()
    label_tps = write_store(wd / "labels", teacher.path, train, args.k)
    label_s = time.perf_counter() - t0

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    common = {
        "num_workers": args.workers,
        "batch_size": args.batch_size,
        "max_steps": steps,
        "lr": args.lr,
        "warmup_steps": max(steps // 10, 1),
        "eval_rows": heldout_n,
        "zero_stage": 2,
        "max_failures": 0,
    }
    methods = {
        "prune+CE": {"mode": "offline", "loss": {"alpha": 1.0, "kd_weight": 0.0}},
        "prune+KD offline top-k": {"mode": "offline", "loss": {"kd_weight": 1.0}},
        "prune+KD online full": {"mode": "online", "loss": {"kd_weight": 1.0}},
    }
    dirs = {"teacher": teacher.path, "pruned (no recovery)": pruned}
    train_tps: dict[str, float] = {}
    for name, over in methods.items():
        cfg = DistillConfig.model_validate({**common, **over})
        out = wd / name.replace(" ", "_").replace("+", "_")
        spec = LoopSpec(
            cfg=cfg,
            student_path=str(pruned),
            teacher_path=str(teacher.path) if cfg.mode == "online" else None,
            store_path=str(wd / "labels") if cfg.mode == "offline" else None,
            train_path=str(wd / "train.parquet"),
            heldout_path=str(wd / "heldout.parquet"),
            seq_len=seq_len,
            total_steps=steps,
            out_dir=str(out),
        )
        shutil.rmtree(wd / "ray", ignore_errors=True)
        metrics = launch(spec, f"kdrec-{out.name}", wd / "ray")
        train_tps[name] = metrics["tokens_per_s"]
        dirs[name] = out
        print(
            f"  trained {name}: {metrics['step']:.0f} steps, {metrics['tokens_per_s']:.0f} tok/s",
            flush=True,
        )

    models = {k: load_causal_lm(p) for k, p in dirs.items()}
    q = evaluate_models(models, held, batch_size=4, reference="teacher")
    lt, lp = math.log(q["teacher"]["perplexity"]), math.log(q["pruned (no recovery)"]["perplexity"])
    rows = []
    for name, m in q.items():
        rec = (lp - math.log(m["perplexity"])) / (lp - lt) if lp != lt else float("nan")
        rows.append(
            (
                name,
                count_parameters(models[name]) / 1e6,
                m["perplexity"],
                m["next_token_accuracy"],
                m.get("agreement", 1.0),
                rec,
                train_tps.get(name),
            )
        )
    print()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()} {platform.processor() or '?'} cpus={os.cpu_count()}")
    print(
        f"budget: {steps} steps x {per_step} tokens = {steps * per_step} training tokens/method, "
        f"seq_len {seq_len}, {args.workers} workers ZeRO-2 fp32, lr {args.lr}, "
        f"held-out {held.shape[0]}x{seq_len} tokens, top-k {args.k}"
    )
    hdr = f"{'model':26} {'params M':>8} {'ppl':>10} {'acc':>6} {'agree':>6} {'recov':>6} {'train tok/s':>11}"
    print(hdr)
    print("-" * len(hdr))
    for name, pm, ppl, acc, agr, rec, tps in rows:
        tps_s = f"{tps:11.0f}" if tps else f"{'-':>11}"
        print(f"{name:26} {pm:8.1f} {ppl:10.2f} {acc:6.3f} {agr:6.3f} {rec:6.3f} {tps_s}")
    off, on = train_tps["prune+KD offline top-k"], train_tps["prune+KD online full"]
    print(
        f"offline/online training tokens/s: {off / on:.2f}x (goal >= 1.5x); soft labels: "
        f"{label_tps:.0f} teacher tok/s, {label_s:.0f} s once for the store"
    )
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    (wd / "result.json").write_text(
        json.dumps({"rows": rows, "offline_online": off / on}, default=str)
    )


if __name__ == "__main__":
    main()
