"""distill's KD against TRL on the same pruned SmolLM2 start, the same rows and token budget.

    pip install -e '.[bench]'                          # TRL, the peer (not in the default install)
    .venv/bin/python benchmarks/kd_vs_trl.py           # 40,960 tokens/method, ~40 min on 2 cores
    .venv/bin/python benchmarks/kd_vs_trl.py --ablations   # + one-factor-at-a-time variants
    .venv/bin/python benchmarks/kd_vs_trl.py --quick       # 4k tokens/method: a smoke run

    # the demo's own job (runs/smollm2: pruned, the soft-label store's rows, held-out split)
    .venv/bin/python benchmarks/kd_vs_trl.py --suite demo-offline --from-run runs/smollm2 \
        [--ablations]                                  # distill's demo KD vs TRL GKD, 64 steps
    .venv/bin/python benchmarks/kd_vs_trl.py --suite demo-onpolicy --from-run runs/smollm2 \
        --seconds 300                                  # on-policy, equal training clock
    ... --lock /work/bench.lock                        # hold the lock per method, not per run

The demo suites add an extra corpus no stage trains on (the installed ``rich`` package's Python
sources, read like ``evaluate.extra_corpora``) and sequence-level columns: greedy agreement with
the teacher's 32-token answers, exact answers and the calibrated cascade's student share at a
0.8 agreement target (``distill calibrate``'s replay and choice: fitted on one half of 64
held-out prompts, measured on the other), and the evaluate stage's generation checks (chrF
against the teacher's answers, degenerate rate) on its prompt set. ``demo-onpolicy`` compares
TRL ``GKDTrainer`` at λ=0.5, β=0.5 (and with ``seq_kd``) with distill's ``on_policy`` steps at the
same λ, β, prompts (each row's first 64 tokens) and 32 sampled tokens, and with distill
offline-only, each for the same ``--seconds`` of training clock at a constant LR after warmup.

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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill.machine import describe

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
PEERS = ("trl_gkd", "trl_sft", "trl_gkd_onpolicy", "trl_gkd_seqkd")
# --suite demo-*: the demo's `distill:` section, then these overrides (a "store" key names it)
DEMO = {
    "distill_demo": {},
    "distill_offline_only": {},
    "distill_onpolicy": {"on_policy": "from-opts"},
}
# one of the demo's KD choices at a time (--suite demo-offline --ablations)
DEMO_ABLATIONS = {
    "demo_train_embeddings": {"freeze_embeddings": False},
    "demo_alpha_0.1": {"loss": {"alpha": 0.1}},
    "demo_lr_1e-3": {"lr": 1e-3},
    "demo_lr_2.5e-4": {"lr": 2.5e-4},
    "demo_topk_store": {"store": "topk"},
}
SUITES = {
    "stdlib": [*PEERS[:2], *DISTILL],
    "demo-offline": ["trl_gkd", "distill_demo"],
    "demo-onpolicy": [
        "trl_gkd_onpolicy",
        "trl_gkd_seqkd",
        "distill_onpolicy",
        "distill_offline_only",
    ],
}
SAMPLE_S = 3.0  # memory sampling period of run_method
STEP_CAP = 100_000  # max_steps of a --seconds run: the training clock ends it


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
    from distill.data.packed import make_calib_loop, write_rows
    from distill.data.packing import stdlib_split_rows
    from distill.labels.encode import EncodingSpec
    from distill.labels.local import write_local_stores
    from distill.models.config import GGUFSource
    from distill.models.loader import load_causal_lm, load_tokenizer, resolve_source
    from distill.pipeline import load_config
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


def prepare_from_run(wd: Path, run: Path, o: dict[str, Any], topk: bool) -> Path:
    """The demo's own job: its pruned student, its soft-label store (and that store's rows as
    the train rows), its held-out split; the extra corpus; a top-k store of the same rows when
    ``topk`` (one teacher pass)."""
    from distill.data.packed import read_rows, write_rows
    from distill.labels.store import LabelStore
    from distill.models.config import GGUFSource
    from distill.models.loader import resolve_source

    prep = wd / "prep"
    key = {"run": str(run.resolve()), "heldout_rows": o["heldout_rows"], "extra": o["extra"]}
    done = prep / "done.json"
    info = json.loads(done.read_text()) if done.exists() else {}
    if info.get("key") != key:
        prep.mkdir(parents=True, exist_ok=True)
        store = LabelStore.open(run / "labels")
        train = store.read_rows(np.arange(store.num_rows))["input_ids"].numpy().astype(np.int32)
        write_rows(prep / "train.parquet", train)
        held = read_rows(run / "data/heldout.parquet")[: o["heldout_rows"]]
        write_rows(prep / "heldout.parquet", held)
        for name, src in (("pruned", run / "pruned"), (store.manifest.encoding, run / "labels")):
            (prep / name).unlink(missing_ok=True)
            (prep / name).symlink_to(src.resolve())
        teacher = resolve_source(GGUFSource())
        info = {"key": key, "teacher": str(teacher.path), "from_run": str(run)}
        info.update(store_seconds=0.0, store_tokens_per_s=0.0, rows=int(len(train)))
        write_extra_rows(prep, Path(info["teacher"]), o)
        done.write_text(json.dumps(info))
    if topk and not (prep / "topk/manifest.json").exists():
        from distill.labels.encode import EncodingSpec
        from distill.labels.local import write_local_stores

        train = read_rows(prep / "train.parquet")
        spec = EncodingSpec("topk", o["k"], fidelity_stride=max(1, train.size // 2048))
        write_local_stores({prep / "topk": spec}, Path(info["teacher"]), train, 4, "kd_vs_trl")
    return prep


def extra_corpus(o: dict[str, Any]):
    """The extra corpus: Python code no stage trains on (default: the installed ``rich``)."""
    from distill.eval.config import ExtraCorpus

    path = o["extra"]
    if path == "rich":  # its *.py sources (a directory's **/* took __pycache__'s .pyc bytes too)
        return ExtraCorpus(name="rich", package="rich", max_rows=o["heldout_rows"])
    return ExtraCorpus(name=Path(path).name, paths=[Path(path)], max_rows=o["heldout_rows"])


def write_extra_rows(prep: Path, teacher: Path, o: dict[str, Any]) -> None:
    """``prep/extra.parquet``: the extra corpus read with distill.eval.extra's loader."""
    import ray

    from distill.data.packed import write_rows
    from distill.eval.extra import describe, extra_corpus_rows
    from distill.models.loader import load_tokenizer

    ec = extra_corpus(o)
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    rows = extra_corpus_rows(0, ec, load_tokenizer(teacher), o["seq_len"])
    write_rows(prep / "extra.parquet", rows)
    (prep / "extra.json").write_text(json.dumps({"name": ec.name, **describe(ec)}))


def distill_config(method: str, o: dict[str, Any]) -> tuple[Any, str]:
    """The method's DistillConfig and the store it reads."""
    from distill.pipeline import load_config
    from distill.train.config import DistillConfig

    if method in DEMO or method in DEMO_ABLATIONS:
        over = dict(DEMO.get(method, DEMO_ABLATIONS.get(method, {})))
        base = load_config(DEMO_CONFIG).distill.model_dump(mode="json")
        base.update(
            max_failures=0,
            checkpoint_every=0,
            eval_every=o["eval_every"],
            eval_rows=o["heldout_rows"],
            seed=o["seed"],
            max_steps=o["steps"],
        )
        if over.pop("on_policy", None):
            base["on_policy"] = {
                "lmbda": o["lmbda"],
                "max_new_tokens": o["max_new_tokens"],
                "prompt_tokens": o["prompt_tokens"],
                "temperature": o["temperature"],
                "loss": {"name": "jsd", "beta": o["beta"]},
            }
        if o.get("seconds"):
            base.update(max_seconds=o["seconds"], max_steps=STEP_CAP)
        if o.get("schedule") == "constant":
            base["min_lr_ratio"] = 1.0
        store = over.pop("store", load_config(DEMO_CONFIG).soft_labels.encoding)
        if "loss" in over:
            base["loss"] = {**base["loss"], **over.pop("loss")}
        return DistillConfig.model_validate({**base, **over}), store
    over = dict(ABLATIONS.get(method, DISTILL.get(method, {})))
    store = over.pop("store", "topk") if method in DISTILL else "topk"
    cfg_dict = {**base_config(o), "mode": "offline", **over}
    if "loss" in over:
        cfg_dict["loss"] = over["loss"]
    return DistillConfig.model_validate(cfg_dict), store


def run_distill(method: str, prep: Path, out: Path, o: dict[str, Any]) -> dict[str, Any]:
    import ray
    from mlflow import MlflowClient

    from distill.train.launch import launch
    from distill.train.loop import LoopSpec

    cfg, store = distill_config(method, o)
    info = json.loads((prep / "done.json").read_text())
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.create_experiment("kd_vs_trl", artifact_location=str(out / "mlartifacts"))
    run_id = client.create_run(exp).info.run_id
    spec = LoopSpec(
        cfg=cfg,
        student_path=str(prep / "pruned"),
        teacher_path=info["teacher"] if cfg.needs_teacher else None,
        store_path=str(prep / store) if cfg.mode == "offline" else None,
        train_path=str(prep / "train.parquet"),
        heldout_path=str(prep / "heldout.parquet"),
        seq_len=o["seq_len"],
        total_steps=cfg.max_steps,
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
        "steps": final["step"],
        "tokens": final["tokens"],
        "tokens_per_s": final["tokens_per_s"],
        "on_policy_steps": final.get("on_policy_steps", 0.0),
        "rollout_seconds": final.get("rollout_seconds", 0.0),
        "rollout_tokens": final.get("rollout_tokens", 0.0),
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


@contextlib.contextmanager
def held(lock: Path | None):
    """The benchmark lock (``--lock``) for one measurement, so other measurements can run
    between this run's methods but never during one."""
    if lock is None:
        yield
        return
    import fcntl

    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_method(
    method: str, prep: Path, wd: Path, o: dict[str, Any], reuse: bool = False
) -> dict[str, Any]:
    """One method in its own process; peak memory of its process tree sampled every 3 s.

    Reading PSS (``/proc/PID/smaps``) of a multi-GB process tree costs 15-45% of one core at a
    0.5 s period, CPU taken from the method being timed on a 2-core box; training memory is
    flat between steps, so a 3 s period finds the same peak. ``reuse``: a finished result of
    the same settings is kept (a run interrupted between methods continues)."""
    out = wd / method
    res_path = out / "result.json"
    if reuse and res_path.exists():
        res = json.loads(res_path.read_text())
        if res.get("opts") == o and "peak_pss" in res:
            return res
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
        opts=o,
    )
    res_path.write_text(json.dumps(res))
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
    ap.add_argument("--suite", choices=sorted(SUITES), default="stdlib")
    ap.add_argument("--from-run", type=Path, help="demo suites: the pipeline's workdir")
    ap.add_argument("--methods", help="comma-separated (default: the suite's)")
    ap.add_argument("--ablations", action="store_true", help="add the one-factor variants")
    ap.add_argument("--quick", action="store_true", help="4,096 tokens/method (a smoke run)")
    ap.add_argument("--seconds", type=float, help="training-clock budget per method")
    ap.add_argument("--lmbda", type=float, default=0.5, help="on-policy share of steps")
    ap.add_argument("--beta", type=float, default=0.5, help="JSD beta of the on-policy methods")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--extra", default="rich", help="extra corpus: 'rich' or a directory")
    ap.add_argument("--lock", type=Path, help="take this lock around each measurement")
    ap.add_argument("--reuse", action="store_true", help="keep finished methods' results")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--opts", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        child(args.run, args.workdir, json.loads(args.opts))
        return
    demo = args.suite.startswith("demo")
    if demo and args.from_run is None:
        ap.error(f"--suite {args.suite} needs --from-run (the demo pipeline's workdir)")
    tokens = 4096 if args.quick else args.tokens
    if demo and args.tokens == ap.get_default("tokens") and not args.quick:
        tokens = demo_tokens()
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
        "suite": args.suite,
        "seconds": args.seconds,
        "schedule": "constant" if args.seconds else "cosine",
        "lmbda": args.lmbda,
        "beta": args.beta,
        "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": args.prompt_tokens,
        "temperature": args.temperature,
        "extra": args.extra,
    }
    if args.seconds:  # the clock ends each run; warmup stays, the LR is constant after it
        o["steps"] = STEP_CAP
    methods = args.methods.split(",") if args.methods else list(SUITES[args.suite])
    if args.ablations:
        methods += list(DEMO_ABLATIONS if demo else ABLATIONS)
    t0 = time.perf_counter()
    if demo:
        with held(args.lock):
            prep = prepare_from_run(args.workdir, args.from_run, o, "demo_topk_store" in methods)
    else:
        prep = prepare(args.workdir, o)
    results = {}
    for m in methods:
        print(f"[kd_vs_trl] {m} ...", flush=True)
        with held(args.lock):
            results[m] = run_method(m, prep, args.workdir, o, args.reuse)
        r = results[m]
        print(f"  {m}: {r['tokens_per_s']:.0f} tok/s, {r['train_seconds']:.0f} s", flush=True)
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "total_seconds": time.perf_counter() - t0,
    }
    with held(args.lock):
        report(results, prep, o, header, args.workdir, time_to)


def demo_tokens() -> int:
    """The demo's KD budget (``max_steps × batch_size × seq_len`` of its ``distill:``)."""
    from distill.pipeline import load_config

    cfg = load_config(DEMO_CONFIG)
    return int(cfg.distill.max_steps or 0) * cfg.distill.batch_size * cfg.data.seq_len


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
