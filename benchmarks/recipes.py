"""Recipe search: prune shape x kept fraction x KD tokens, every int4 student measured against the
quantized teacher (teacher_int4) in the same engine, on the held-out split and on Python code no
stage trains on (the `rich` package's sources).

    .venv/bin/python benchmarks/recipes.py --shapes width,depth,combined --keep 0.58,0.7,0.85 \\
        --tokens 65536
    .venv/bin/python benchmarks/recipes.py --shapes width --keep 0.7 --tokens 262144   # more tokens
    .venv/bin/python benchmarks/recipes.py --table            # print the table of every recipe run
    .venv/bin/python benchmarks/recipes.py --curve runs/smollm2-long   # a run's learning curve

Each recipe is a pipeline run of --config (pipelines/configs/smollm2-long.yaml) in its own
workdir under --out, with the prune and distill settings of the recipe, reusing the base run's
corpus, soft-label store and int4 teacher (`--reuse-from`, run the base first:
`distill run pipelines/configs/smollm2-long.yaml --set "stages=[soft_labels,teacher_int4]"`),
and every earlier recipe's pruned model when the prune settings match. Evaluate scores the fp
teacher (the reference), teacher_int4, the teacher's GPTQ checkpoint in the student's engine
format (teacher_int4_gptq_cpu), the fp student and its int4 engine export (generation checks
off), so every ratio below comes from one process on the same rows.

Per recipe: the shape (layers, MLP width), parameters, KD tokens, training wall seconds and
CPU-hours (seconds x reserved CPUs), held-out and rich perplexity of the fp student and of the
int4 student, batch-1 and batch-8 decode tokens/s of the int4 student in the engine, and its
ratios to teacher_int4: the goal (issue 26) is decode >= 1.5x at ppl <= 1.5x on both corpora;
and the same three ratios to teacher_int4_gptq_cpu (what pruning + KD bought in one format).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from distill.lineage.tracker import resolve_tracking_uri
from distill.machine import describe
from distill.pipeline import load_config

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # prune settings of each shape (the kept fraction is prune.target_params)
    "width": {"policy": "width", "prune_hidden": False, "prune_heads": False},
    "depth": {"policy": "depth"},
    "combined": {"policy": "combined", "prune_hidden": False, "prune_heads": False},
}
ROWS_PER_STEP = 4  # distill.batch_size of the base config, one worker


def recipe_name(shape: str, keep: float, tokens: int) -> str:
    return f"{shape}-{keep:g}-{tokens // 1024}k"


def overrides(shape: str, keep: float, tokens: int, seq_len: int) -> list[str]:
    steps = max(1, tokens // (ROWS_PER_STEP * seq_len))
    sets = [f"prune.{k}={str(v).lower()}" for k, v in SHAPES[shape].items()]
    sets += [
        f"prune.target_params={keep}",
        f"distill.max_steps={steps}",
        f"distill.warmup_steps={max(4, steps // 64)}",
        f"distill.checkpoint_every={max(32, steps // 8)}",
        "evaluate.models=[teacher_int4,teacher_int4_gptq_cpu,student,int4_cpu]",
        "evaluate.generation.enabled=false",
    ]
    return sets


def run_recipe(args, shape: str, keep: float, tokens: int, reuse: list[Path]) -> Path:
    wd = args.out / recipe_name(shape, keep, tokens)
    if (wd / "report.json").exists() and not args.rerun:
        print(f"  {wd.name}: done before (report.json), not rerun", flush=True)
        return wd
    cmd = [sys.executable, "-m", "distill.cli", "run", str(args.config), "--workdir", str(wd)]
    for d in reuse:
        cmd += ["--reuse-from", str(d)]
    for s in overrides(shape, keep, tokens, args.seq_len):
        cmd += ["--set", s]
    print(f"  {wd.name}: {' '.join(cmd[3:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    (args.out / f"{wd.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        print(f"  {wd.name}: FAILED ({' / '.join(tail)})", flush=True)
    else:
        print(f"  {wd.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return wd


def row(wd: Path, cpus: float) -> dict | None:
    """The recipe's figures from its report.json and stage records (None if unfinished);
    ``cpus``: the CPUs the distill stage reserves (CPU-hours = training seconds x cpus)."""
    if not (wd / "report.json").exists():
        return None
    report = json.loads((wd / "report.json").read_text())
    by = {m["model"]: m for m in report["models"]}
    st = {p.stem: json.loads(p.read_text()) for p in (wd / "stages").glob("*.json")}
    prune, train = st["prune"]["summary"], st["distill"]["metrics"]
    t4, s4, fp = by["teacher_int4"], by["int4_cpu"], by["student"]
    seconds = train["tokens"] / train["tokens_per_s"]  # the loop's own time, not Ray's start

    def ppl(m: dict, corpus: str | None) -> float:
        return m["perplexity"] if corpus is None else m["extra"][corpus]["perplexity"]

    out = {
        "recipe": wd.name,
        "layers": prune["shape"]["num_hidden_layers"],
        "mlp": prune["shape"]["intermediate_size"],
        "params": prune["params_after"],
        "tokens": train.get("tokens"),
        "train_s": seconds,
        "cpu_h": seconds * cpus / 3600,
        "fp_ppl": ppl(fp, None),
        "fp_rich": ppl(fp, "rich"),
        "int4_ppl": ppl(s4, None),
        "int4_rich": ppl(s4, "rich"),
        "t4_ppl": ppl(t4, None),
        "t4_rich": ppl(t4, "rich"),
        "b1": s4.get("decode_b1_tps"),
        "b8": s4.get("decode_b8_tps"),
        "t4_b1": t4.get("decode_b1_tps"),
        "mb": s4["size_bytes"] / 1e6,
    }
    out["speed_x"] = out["b1"] / out["t4_b1"] if out["b1"] and out["t4_b1"] else None
    out["ppl_x"] = out["int4_ppl"] / out["t4_ppl"]
    out["rich_x"] = out["int4_rich"] / out["t4_rich"]
    out["goal"] = bool(
        out["speed_x"] and out["speed_x"] >= 1.5 and out["ppl_x"] <= 1.5 and out["rich_x"] <= 1.5
    )
    # the teacher in the student's own engine format (runs before it had none: no ratios)
    g = by.get("teacher_int4_gptq_cpu")
    out["vs_gptq"] = None
    if g is not None and g.get("decode_b1_tps") and out["b1"]:
        out["vs_gptq"] = (
            out["b1"] / g["decode_b1_tps"],
            out["int4_ppl"] / ppl(g, None),
            out["int4_rich"] / ppl(g, "rich"),
        )
    return out


def table(rows: list[dict]) -> str:
    head = (
        "| recipe | layers | MLP | params | KD tokens | train s | CPU-h | fp ppl held-out / rich "
        "| int4 ppl held-out / rich | decode b1 / b8 tok/s | int4 MB | vs teacher_int4: speed "
        "b1, ppl, rich ppl | goal | vs the GPTQ teacher in the same format |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        g = r.get("vs_gptq")
        vs_gptq = f"{g[0]:.2f}x, {g[1]:.2f}x, {g[2]:.2f}x" if g else "not scored"
        lines.append(
            f"| {r['recipe']} | {r['layers']} | {r['mlp']} | {r['params'] / 1e6:.1f}M | "
            f"{(r['tokens'] or 0) / 1e3:.0f}k | {r['train_s']:.0f} | {r['cpu_h']:.2f} | "
            f"{r['fp_ppl']:.2f} / {r['fp_rich']:.2f} | {r['int4_ppl']:.2f} / {r['int4_rich']:.2f} "
            f"| {r['b1']:.0f} / {r['b8']:.0f} | {r['mb']:.1f} | {r['speed_x']:.2f}x, "
            f"{r['ppl_x']:.2f}x, {r['rich_x']:.2f}x | {'**met**' if r['goal'] else 'missed'} "
            f"| {vs_gptq} |"
        )
    t = rows[0] if rows else None
    if t:
        lines.append(
            f"\nteacher_int4 (same engine, each recipe's own run): held-out ppl {t['t4_ppl']:.2f}, "
            f"rich {t['t4_rich']:.2f}, decode b1 {t['t4_b1']:.0f} tok/s (first recipe's run)"
        )
    return "\n".join(lines)


def curve(wd: Path, cpus: float, tracking_uri: str) -> str:
    """The learning curve of ``wd``'s distill stage: at each in-loop held-out eval
    (``distill.eval_every``, ``distill.eval_rows`` rows), KD tokens, training seconds,
    CPU-hours and held-out ppl, read back from the run's MLflow metric history."""
    from mlflow import MlflowClient

    run_id = json.loads((wd / "stages" / "distill.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri)
    hist = {
        k: {m.step: m.value for m in client.get_metric_history(run_id, k)}
        for k in ("eval/ppl", "tokens", "train_seconds")
    }
    lines = [
        "| step | KD tokens | train s | CPU-h | held-out ppl (loop eval) |",
        "|---|---|---|---|---|",
    ]
    for step, ppl in sorted(hist["eval/ppl"].items()):  # logged only where the loop evaluated
        secs = hist["train_seconds"][step]
        lines.append(
            f"| {step} | {hist['tokens'][step] / 1e3:.0f}k | {secs:.0f} | "
            f"{secs * cpus / 3600:.2f} | {ppl:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "pipelines/configs/smollm2-long.yaml")
    ap.add_argument("--base", type=Path, default=ROOT / "runs/smollm2-long", help="base workdir")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/recipes")
    ap.add_argument("--shapes", default="width,depth,combined")
    ap.add_argument("--keep", default="0.58,0.7,0.85", help="prune.target_params values")
    ap.add_argument("--tokens", default="65536", help="KD tokens per recipe (comma-separated)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rerun", action="store_true", help="rerun recipes that have a report")
    ap.add_argument("--table", action="store_true", help="only print the table of finished runs")
    ap.add_argument("--curve", type=Path, help="only print this workdir's row and learning curve")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"# recipes: {' '.join(sys.argv)}\n# machine: {describe()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    cfg = load_config(args.config)
    cpus = cfg.distill.num_workers * cfg.distill.cpus_per_worker  # CPU-h = train s x CPUs
    if args.curve:
        if (r := row(args.curve, cpus)) is None:
            sys.exit(f"no finished run in {args.curve} (no report.json)")
        uri = resolve_tracking_uri(cfg.tracking, args.curve)
        print(table([r]), curve(args.curve, cpus, uri), sep="\n\n", flush=True)
        return
    if not args.table:
        if not (args.base / "stages" / "soft_labels.json").exists():
            sys.exit(f"no base run in {args.base}: run the base stages first (see --help)")
        for tokens in (int(t) for t in args.tokens.split(",")):
            for shape in args.shapes.split(","):
                for keep in (float(k) for k in args.keep.split(",")):
                    done = [d for d in sorted(args.out.iterdir()) if (d / "stages").is_dir()]
                    run_recipe(args, shape, keep, tokens, [args.base, *done])
    rows = [r for w in sorted(args.out.iterdir()) if w.is_dir() and (r := row(w, cpus))]
    (args.out / "recipes.json").write_text(json.dumps(rows, indent=1))
    print(table(rows), flush=True)


if __name__ == "__main__":
    main()
