"""Depth vs width vs combined pruning of the real teacher (SmolLM2-135M) at one parameter budget.

    .venv/bin/python benchmarks/prune.py                        # 0.6x, 8x256 calib, 8x256 eval
    .venv/bin/python benchmarks/prune.py --target 0.5 --calib-rows 32 --eval-rows 32 \
        --seq-len 512 --block-importance ppl --round-to 64

Importance is computed once on the teacher from calibration rows (train documents of the stdlib
corpus, tokenized with the teacher's tokenizer); each policy's plan is then applied to a fresh
copy and scored on held-out documents (every 10th file), with no recovery training. Prints a
table (shape, parameters, ratio, perplexity, next-token accuracy, seconds) and saves the
importance plot to ``<out-dir>/prune_importance.png`` and the table to ``prune.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from distill.machine import describe


def _shape(s) -> str:
    return (
        f"{s.num_hidden_layers}/{s.num_attention_heads}/{s.num_key_value_heads}/"
        f"{s.intermediate_size}/{s.hidden_size}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", type=float, default=0.6, help="parameter ratio of the teacher")
    ap.add_argument(
        "--policies",
        default="depth,width,combined,mlp-only",
        help="comma list of depth, width, combined, mlp-only (width without heads/hidden)",
    )
    ap.add_argument("--calib-rows", type=int, default=8)
    ap.add_argument("--eval-rows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--block-importance", choices=["cosine", "ppl"], default="cosine")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", type=Path, default=Path("runs/benchmarks/prune"))
    args = ap.parse_args()

    import torch

    from distill.data.packed import make_calib_loop
    from distill.data.packing import stdlib_split_rows
    from distill.eval.metrics import evaluate_models
    from distill.models.config import GGUFSource
    from distill.models.loader import (
        count_parameters,
        load_causal_lm,
        load_tokenizer,
        resolve_source,
    )
    from distill.prune.apply import apply_plan
    from distill.prune.config import PruneConfig
    from distill.prune.core import plan_for
    from distill.prune.importance import compute_importance
    from distill.prune.plots import importance_figure
    from distill.prune.shape import ModelShape

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    teacher = resolve_source(GGUFSource())
    tok = load_tokenizer(teacher.path)
    model = load_causal_lm(teacher.path)
    calib, held = stdlib_split_rows(tok, args.seq_len, args.calib_rows, args.eval_rows)
    print(
        f"[prune-bench] teacher {teacher.name}: loaded in {time.perf_counter() - t0:.0f}s; "
        f"calib {calib.shape}, held-out {held.shape}",
        flush=True,
    )

    def evaluate(m) -> dict[str, float]:
        return evaluate_models({"m": m}, held, args.batch_size)["m"]

    rows = []
    base = evaluate(model)
    n0 = count_parameters(model)
    rows.append(("teacher", _shape(ModelShape.from_config(model.config)), n0, 1.0, base, 0.0))
    print(f"[prune-bench] teacher ppl {base['perplexity']:.2f}", flush=True)

    t = time.perf_counter()
    scores = compute_importance(
        model, make_calib_loop(calib, args.batch_size), block=args.block_importance
    )
    t_imp = time.perf_counter() - t
    print(f"[prune-bench] importance ({args.block_importance}) in {t_imp:.0f}s", flush=True)

    kept_by_policy = {}
    for policy in args.policies.split(","):
        cfg = PruneConfig(
            policy="width" if policy == "mlp-only" else policy,
            target_params=args.target,
            round_to=args.round_to,
            block_importance=args.block_importance,
            prune_hidden=policy != "mlp-only",
            prune_heads=policy != "mlp-only",
        )
        pruned = copy.deepcopy(model)
        t = time.perf_counter()
        plan = plan_for(pruned, cfg)
        kept = apply_plan(pruned, plan, scores)
        took = time.perf_counter() - t
        kept_by_policy[policy] = kept["kept_layers"]
        shape = _shape(plan.shape)
        n = count_parameters(pruned)
        q = evaluate(pruned)
        rows.append((policy, shape, n, n / n0, q, took))
        print(f"[prune-bench] {policy}: {shape} ppl {q['perplexity']:.1f}", flush=True)
        del pruned

    args.out_dir.mkdir(parents=True, exist_ok=True)
    fig = importance_figure(scores, kept_by_policy.get("depth"))
    png = args.out_dir / "prune_importance.png"
    fig.savefig(png, dpi=110)
    table = [
        {
            "model": r[0],
            "shape L/q/kv/I/H": r[1],
            "params": r[2],
            "ratio": r[3],
            "perplexity": r[4]["perplexity"],
            "next_token_accuracy": r[4]["next_token_accuracy"],
            "prune_s": r[5],
        }
        for r in rows
    ]
    (args.out_dir / "prune.json").write_text(
        json.dumps(
            {
                "args": vars(args) | {"out_dir": str(args.out_dir)},
                "kept_layers": kept_by_policy,
                "block_importance": scores.block.tolist(),
                "table": table,
            },
            indent=1,
        )
    )

    print()
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {describe()}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"target {args.target}x params; calib {args.calib_rows}x{args.seq_len}, held-out "
        f"{args.eval_rows}x{args.seq_len} tokens (stdlib, split by document); no recovery; "
        f"block importance {args.block_importance}, importance pass {t_imp:.0f}s"
    )
    print()
    print(
        f"| {'plan':<9} | {'L/q/kv/I/H':<17} | {'params':>11} | {'ratio':>6} | "
        f"{'held-out ppl':>12} | {'next-tok acc':>12} | {'apply s':>7} |"
    )
    print(f"|{'-' * 11}|{'-' * 19}|{'-' * 13}|{'-' * 8}|{'-' * 14}|{'-' * 14}|{'-' * 9}|")
    for r in table:
        print(
            f"| {r['model']:<9} | {r['shape L/q/kv/I/H']:<17} | {r['params']:>11,} | "
            f"{r['ratio']:>6.3f} | {r['perplexity']:>12.2f} | "
            f"{r['next_token_accuracy']:>12.3f} | {r['prune_s']:>7.1f} |"
        )
    print(f"\ndepth plan keeps blocks {kept_by_policy.get('depth')}")
    print(f"importance plot: {png}")


if __name__ == "__main__":
    main()
