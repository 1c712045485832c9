"""KD recovery of a pruned SmolLM2-135M: no recovery vs CE-only vs offline top-k KD vs
online full-logit KD, all under the same training-token budget, on Ray Train + DeepSpeed (CPU).

    .venv/bin/python benchmarks/kd_recovery.py            # 48k tokens/method, ~30 min on 2 cores
    .venv/bin/python benchmarks/kd_recovery.py --quick    # 6k tokens/method, a few minutes
    .venv/bin/python benchmarks/kd_recovery.py --policy depth   # drop decoder blocks instead

The student is the teacher cut by ``distill.prune`` with the demo's plan, read from
``pipelines/configs/smollm2.yaml`` (MLP channels by activation importance to ~0.58x the
parameters, multiples of 64); ``--policy depth`` drops whole blocks by block importance
(1 - cos(h_in, h_out)) instead.
Prints held-out perplexity, next-token accuracy, top-1 agreement with the teacher, the recovered
fraction of the log-perplexity gap, and training tokens/s (offline vs online).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from distill.machine import describe

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "pipelines/configs/smollm2.yaml"


def prune_student(teacher_dir: Path, out: Path, cfg, calib: np.ndarray) -> Path:
    """The teacher cut by ``distill.prune`` (what the ``prune`` stage runs), saved to ``out``."""
    from distill.data.packed import make_calib_loop
    from distill.models.loader import load_causal_lm
    from distill.prune.core import prune_model
    from distill.prune.stage import save_checkpoint

    model = load_causal_lm(teacher_dir)
    result = prune_model(model, cfg, make_calib_loop(calib, cfg.calib_batch_size))
    print(f"  pruned: {result.plan.summary()}", flush=True)
    save_checkpoint(model, teacher_dir, out)
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
    ap.add_argument(
        "--policy", choices=["width", "depth", "combined"], help="prune policy (default: demo's)"
    )
    ap.add_argument("--target", type=float, help="parameter ratio of the teacher (demo's: 0.58)")
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
    from distill.data.packing import stdlib_split_rows
    from distill.eval.metrics import evaluate_models
    from distill.models.config import GGUFSource
    from distill.models.loader import (
        count_parameters,
        load_causal_lm,
        load_tokenizer,
        resolve_source,
    )
    from distill.pipeline import load_config
    from distill.prune.config import PruneConfig
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
    train, held = stdlib_split_rows(tok, seq_len, n_train, heldout_n)
    write_rows(wd / "train.parquet", train)
    write_rows(wd / "heldout.parquet", held)
    demo = load_config(DEMO_CONFIG).prune  # the demo's plan; --policy/--target override it
    pcfg = PruneConfig.model_validate(
        {
            **demo.model_dump(),
            "policy": args.policy or demo.policy,
            "target_params": args.target or demo.target_params,
        }
    )
    pruned = prune_student(teacher.path, wd / "pruned", pcfg, train[: pcfg.calib_rows])
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
    print(f"machine: {describe()}")
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
