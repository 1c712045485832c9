"""distill's KD against TRL on the same pruned SmolLM2 start, the same rows and token budget.

    pip install -e '.[bench]'                          # TRL, the peer (not in the default install)
    .venv/bin/python benchmarks/kd_vs_trl.py           # 40,960 tokens/method, ~40 min on 2 cores
    .venv/bin/python benchmarks/kd_vs_trl.py --ablations   # + one-factor-at-a-time variants
    .venv/bin/python benchmarks/kd_vs_trl.py --quick       # 4k tokens/method: a smoke run

The student is the teacher (SmolLM2-135M-Instruct, the packaged GGUF) cut by ``distill.prune``
with the demo's plan (``pipelines/configs/smollm2.yaml``). Train rows: the stdlib corpus packed
to 256 tokens in a seeded random document order (every 10th file held out); every method sees
the same rows once (TRL in its RandomSampler order, distill in its seeded permutation). The
stores (top-k 32, sampled) come from one teacher pass before any method runs; their cost is
printed separately. Each method runs in its own process (peak memory: Σ PSS of its process tree,
Ray included for distill, and the largest process's RSS). Train time is the training clock (evaluation time excluded on both
sides); the held-out curve gives the time each method needs to reach TRL GKD's final ppl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEMO_CONFIG = HERE.parent / "pipelines/configs/smollm2.yaml"

# method -> DistillConfig overrides on top of BASE (offline methods name their store)
DISTILL = {
    "distill_topk": {"mode": "offline", "store": "topk"},
    "distill_sampled": {"mode": "offline", "store": "sampled"},
    "distill_online": {"mode": "online"},
}
# one factor at a time, against distill_topk
ABLATIONS = {
    "abl_sequential_order": {"shuffle": False},
    "abl_betas_0.95": {"betas": [0.9, 0.95]},
    "abl_min_lr_0.1": {"min_lr_ratio": 0.1},
    "abl_alpha_0.1": {"loss": {"alpha": 0.1, "kd_weight": 1.0}},
    "abl_unfused_loss": {"loss_chunk": 0},
    "abl_2x1_zero2": {"num_workers": 2, "cpus_per_worker": 1, "batch_size": 2, "zero_stage": 2},
    "abl_1x2_zero1": {"zero_stage": 1},
    "abl_1x2_zero2": {"zero_stage": 2},
    "abl_accum_2": {"batch_size": 2, "grad_accum": 2},
    "abl_freeze_embeddings": {"freeze_embeddings": True},
}
PEERS = ("trl_gkd", "trl_sft")
SAMPLE_S = 3.0  # memory sampling period of run_method


def base_config(o: dict[str, Any]) -> dict[str, Any]:
    return {
        "num_workers": 1,
        "cpus_per_worker": 2,
        "zero_stage": 0,
        "batch_size": o["batch_size"],
        "max_steps": o["steps"],
        "lr": o["lr"],
        "warmup_steps": o["warmup"],
        "min_lr_ratio": 0.0,
        "betas": [0.9, 0.999],
        "eval_every": o["eval_every"],
        "eval_rows": o["heldout_rows"],
        "loss": {"alpha": 0.0, "kd_weight": 1.0},
        "seed": o["seed"],
        "max_failures": 0,
    }


def prepare(wd: Path, o: dict[str, Any]) -> Path:
    """Rows, the pruned student and both stores, once per settings (``prep/done.json``)."""
    from distill.config.loader import load_config
    from distill.data.packed import make_calib_loop, write_rows
    from distill.data.packing import stdlib_split_rows
    from distill.labels.encode import EncodingSpec
    from distill.labels.local import write_local_stores
    from distill.models.config import GGUFSource
    from distill.models.loader import load_causal_lm, load_tokenizer, resolve_source
    from distill.prune.core import prune_model
    from distill.prune.stage import save_checkpoint

    prep = wd / "prep"
    key = {k: o[k] for k in ("steps", "batch_size", "seq_len", "heldout_rows", "k", "samples")}
    done = prep / "done.json"
    if done.exists() and json.loads(done.read_text()).get("key") == key:
        return prep
    prep.mkdir(parents=True, exist_ok=True)
    teacher = resolve_source(GGUFSource())
    tok = load_tokenizer(teacher.path)
    n_train = o["steps"] * o["batch_size"]
    train, held = stdlib_split_rows(tok, o["seq_len"], n_train, o["heldout_rows"], shuffle_seed=0)
    write_rows(prep / "train.parquet", train)
    write_rows(prep / "heldout.parquet", held)
    pcfg = load_config(DEMO_CONFIG).prune
    model = load_causal_lm(teacher.path)
    result = prune_model(model, pcfg, make_calib_loop(train[: pcfg.calib_rows], 4))
    print(f"  pruned with the demo's plan: {result.plan.summary()}", flush=True)
    save_checkpoint(model, teacher.path, prep / "pruned")
    stride = max(1, train.size // 2048)
    specs = {
        prep / "topk": EncodingSpec("topk", o["k"], fidelity_stride=stride),
        prep / "sampled": EncodingSpec("sampled", o["samples"], fidelity_stride=stride),
    }
    t0 = time.perf_counter()
    tps = write_local_stores(specs, teacher.path, train, 4, "kd_vs_trl")
    info = {"key": key, "teacher": str(teacher.path), "store_tokens_per_s": tps}
    info["store_seconds"] = time.perf_counter() - t0
    done.write_text(json.dumps(info))
    return prep


def run_distill(method: str, prep: Path, out: Path, o: dict[str, Any]) -> dict[str, Any]:
    import ray
    from mlflow import MlflowClient

    from distill.train.config import DistillConfig
    from distill.train.launch import launch
    from distill.train.loop import LoopSpec

    over = dict(ABLATIONS.get(method, DISTILL.get(method, {})))
    store = over.pop("store", "topk") if method in DISTILL else "topk"
    cfg_dict = {**base_config(o), "mode": "offline", **over}
    if "loss" in over:
        cfg_dict["loss"] = over["loss"]
    cfg = DistillConfig.model_validate(cfg_dict)
    info = json.loads((prep / "done.json").read_text())
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.create_experiment("kd_vs_trl", artifact_location=str(out / "mlartifacts"))
    run_id = client.create_run(exp).info.run_id
    spec = LoopSpec(
        cfg=cfg,
        student_path=str(prep / "pruned"),
        teacher_path=info["teacher"] if cfg.mode == "online" else None,
        store_path=str(prep / store) if cfg.mode == "offline" else None,
        train_path=str(prep / "train.parquet"),
        heldout_path=str(prep / "heldout.parquet"),
        seq_len=o["seq_len"],
        total_steps=o["steps"],
        out_dir=str(out / "student"),
        tracking={"tracking_uri": f"sqlite:///{out}/mlflow.db", "run_id": run_id},
    )
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    final = launch(spec, f"kdvt-{method}", out / "ray")
    wall = time.perf_counter() - t0
    hist = {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)}
        for name in ("eval/ppl", "train_seconds")
    }
    curve = [
        {"step": s, "train_seconds": hist["train_seconds"][s], "ppl": p}
        for s, p in sorted(hist["eval/ppl"].items())
    ]
    order = "seeded permutation per epoch" if cfg.shuffle else "corpus order"
    return {
        "curve": curve,
        "train_seconds": final["train_seconds"],
        "train_wall_seconds": wall,
        "tokens": final["tokens"],
        "tokens_per_s": final["tokens_per_s"],
        "student": str(out / "student"),
        "order": order,
        "store": store if cfg.mode == "offline" else "-",
    }


def _tree_memory(pid: int) -> tuple[int, int]:
    """(Σ PSS, max RSS) over ``pid`` and its descendants, bytes. PSS counts pages shared
    between processes (libtorch mapped by every Ray process) once in total, not once each."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    pss, rss = [], []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            pss.append(info.pss)
            rss.append(info.rss)
    return sum(pss), max(rss, default=0)


def run_method(method: str, prep: Path, wd: Path, o: dict[str, Any]) -> dict[str, Any]:
    """One method in its own process; peak memory of its process tree sampled every 3 s.

    Reading PSS (``/proc/PID/smaps``) of a multi-GB process tree costs 15-45% of one core at a
    0.5 s period, CPU taken from the method being timed on a 2-core box; training memory is
    flat between steps, so a 3 s period finds the same peak."""
    out = wd / method
    res_path = out / "result.json"
    res_path.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--run", method, "--workdir", str(wd), "--opts", json.dumps(o)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak, peak_one, loads = 0, 0, []
    while proc.poll() is None:
        total, one = _tree_memory(proc.pid)
        peak, peak_one = max(peak, total), max(peak_one, one)
        loads.append(os.getloadavg()[0])
        time.sleep(SAMPLE_S)
    if proc.returncode != 0 or not res_path.exists():
        raise SystemExit(f"method {method} failed (exit {proc.returncode})")
    res = json.loads(res_path.read_text())
    res.update(
        process_seconds=time.perf_counter() - t0,
        peak_pss=peak,
        peak_rss_largest=peak_one,
        load_avg=float(np.mean(loads)) if loads else 0.0,
    )
    return res


def child(method: str, wd: Path, o: dict[str, Any]) -> None:
    out = wd / method
    out.mkdir(parents=True, exist_ok=True)
    if method in PEERS:
        from kd_peers import run_trl

        info = json.loads((wd / "prep/done.json").read_text())
        res = run_trl(method, wd / "prep", out, {**o, "teacher": info["teacher"]})
    else:
        res = run_distill(method, wd / "prep", out, o)
    (out / "result.json").write_text(json.dumps(res))


def time_to(curve: list[dict[str, float]], target: float) -> float | None:
    """Training seconds until held-out ppl first reaches ``target`` (log-linear between evals)."""
    prev = None
    for pt in curve:
        if pt["ppl"] <= target:
            if prev is None:
                return pt["train_seconds"]
            a, b = math.log(prev["ppl"]), math.log(pt["ppl"])
            f = (a - math.log(target)) / (a - b) if a != b else 1.0
            return prev["train_seconds"] + f * (pt["train_seconds"] - prev["train_seconds"])
        prev = pt
    return None


def main(argv: list[str] | None = None) -> None:
    from kd_report import report

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kd_vs_trl"))
    ap.add_argument("--tokens", type=int, default=40960, help="training tokens per method")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4, help="rows per optimizer step")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--k", type=int, default=32, help="top-k of the top-k store")
    ap.add_argument("--samples", type=int, default=32, help="draws per position (sampled store)")
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--heldout-rows", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join([*PEERS, *DISTILL]))
    ap.add_argument("--ablations", action="store_true", help="add the one-factor variants")
    ap.add_argument("--quick", action="store_true", help="4,096 tokens/method (a smoke run)")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--opts", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        child(args.run, args.workdir, json.loads(args.opts))
        return
    tokens = 4096 if args.quick else args.tokens
    o = {
        "steps": math.ceil(tokens / (args.batch_size * args.seq_len)),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "warmup": args.warmup,
        "k": args.k,
        "samples": args.samples,
        "eval_every": args.eval_every,
        "heldout_rows": args.heldout_rows,
        "seed": args.seed,
    }
    methods = args.methods.split(",") + (list(ABLATIONS) if args.ablations else [])
    t0 = time.perf_counter()
    prep = prepare(args.workdir, o)
    results = {}
    for m in methods:
        print(f"[kd_vs_trl] {m} ...", flush=True)
        results[m] = run_method(m, prep, args.workdir, o)
        r = results[m]
        print(f"  {m}: {r['tokens_per_s']:.0f} tok/s, {r['train_seconds']:.0f} s", flush=True)
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()} {platform.processor() or '?'} cpus={os.cpu_count()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "total_seconds": time.perf_counter() - t0,
    }
    report(results, prep, o, header, args.workdir, time_to)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
