"""GPTQ int4 vs round-to-nearest int4 vs the fp model, on the real teacher (SmolLM2-135M); with
``--run``, a sweep of GPT-QModel's knobs on a pipeline's student instead.

    .venv/bin/python benchmarks/quantize.py                                  # 16x256 calibration
    .venv/bin/python benchmarks/quantize.py --calib-rows 32 --calib-seq-len 512 --heldout-rows 32
    .venv/bin/python benchmarks/quantize.py --run runs/smollm2 --sweep all   # knobs on the student
    .venv/bin/python benchmarks/quantize.py --run runs/smollm2 --model teacher --recover-steps 24

Calibration rows come from the train documents only; held-out documents (every 10th stdlib file)
are never seen by GPTQ. Prints quantize time, size on disk (fp32, bf16, int4), held-out
perplexity / next-token accuracy / top-1 agreement with fp32, and forward tokens/s, then the
goals: GPTQ clearly better than RTN, <= 10% perplexity increase, >= 4x smaller than fp32.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from distill.machine import describe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib-rows", type=int, default=16)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--heldout-rows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512, help="held-out context length")
    ap.add_argument("--speed-rows", type=int, default=4)
    ap.add_argument("--pack-impl", choices=["original", "block"], default="original")
    ap.add_argument("--damp-percent", type=float, default=0.01)
    ap.add_argument("--desc-act", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None, help="keep outputs here (default: tmp)")
    ap.add_argument("--run", type=Path, default=None, help="sweep on this run's student + data")
    ap.add_argument(
        "--sweep", default=DEFAULT_SWEEP, help=f"with --run: 'all' or names from {list(SWEEP)}"
    )
    ap.add_argument("--model", choices=["student", "teacher"], default="student", help="with --run")
    ap.add_argument("--recover-steps", default="", help="with --run: e.g. '24,48' (off: '')")
    ap.add_argument("--recover-lr", default="1e-5", help="one or more, e.g. '1e-5,1e-4'")
    ap.add_argument("--recover-batch-size", type=int, default=4)
    ap.add_argument("--recover-target", choices=["soft_labels", "fp"], default="soft_labels")
    ap.add_argument("--threads", type=int, default=2, help="engine threads")
    args = ap.parse_args()
    if args.run is not None:
        if args.heldout_rows == 16:  # the demo's held-out set, unless asked otherwise
            args.heldout_rows = 32
        return sweep(args)

    import torch

    from distill.data.packing import stdlib_split_rows
    from distill.eval.metrics import evaluate_models, forward_tokens_per_s
    from distill.models.config import GGUFSource
    from distill.models.loader import load_causal_lm, load_tokenizer, resolve_source
    from distill.quant.checkpoint import peak_rss_mb, weights_bytes
    from distill.quant.config import QuantizeConfig
    from distill.quant.gptq import load_quantized, quantize
    from distill.quant.rtn import fake_quantize_rtn
    from distill.quant.validate import check_group_size, check_model_dir

    t_start = time.perf_counter()
    info = resolve_source(GGUFSource())
    check_group_size(args.group_size, check_model_dir(info.path))
    tok = load_tokenizer(info.path)
    train_rows = -(-args.calib_rows * args.calib_seq_len // args.seq_len)
    train, held = stdlib_split_rows(tok, args.seq_len, train_rows, args.heldout_rows)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="quant-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = QuantizeConfig(
        bits=args.bits,
        group_size=args.group_size,
        desc_act=args.desc_act,
        damp_percent=args.damp_percent,
        calib_rows=args.calib_rows,
        calib_seq_len=args.calib_seq_len,
        pack_impl=args.pack_impl,
        device="cpu",
    )

    t0 = time.perf_counter()
    int4_dir = quantize(info.path, cfg, train, work / "int4")
    quant_s = time.perf_counter() - t0
    quant_rss = peak_rss_mb()

    fp = load_causal_lm(info.path)
    bf16_dir = work / "bf16"
    fp.to(torch.bfloat16).save_pretrained(bf16_dir)
    fp = load_causal_lm(info.path)
    bf16 = load_causal_lm(info.path, dtype="bfloat16")
    rtn = copy.deepcopy(fp)
    fake_quantize_rtn(rtn, args.bits, args.group_size, sym=True)
    int4 = load_quantized(int4_dir, device="cpu")
    models = {"fp32": fp, "bf16": bf16, f"rtn int{args.bits}": rtn, f"gptq int{args.bits}": int4}
    q = evaluate_models(models, held, batch_size=4, reference="fp32")
    sizes = {
        "fp32": weights_bytes(info.path),
        "bf16": weights_bytes(bf16_dir),
        f"rtn int{args.bits}": weights_bytes(int4_dir),  # same packed layout as GPTQ
        f"gptq int{args.bits}": weights_bytes(int4_dir),
    }
    speed = {name: forward_tokens_per_s(m, held[: args.speed_rows]) for name, m in models.items()}

    fp_ppl = q["fp32"]["perplexity"]
    print(f"\n$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {describe()}; "
        f"torch {torch.__version__}; GPTQMODEL_CPU_WORKERS={os.environ.get('GPTQMODEL_CPU_WORKERS')}"
    )
    print(f"model: {info.name} ({info.path})")
    print(
        f"calibration: {args.calib_rows} x {args.calib_seq_len} train tokens; held-out: "
        f"{len(held)} x {args.seq_len} ({int(q['fp32']['eval_tokens'])} predicted tokens)"
    )
    print(
        f"GPTQ: bits={args.bits} group={args.group_size} desc_act={args.desc_act} "
        f"damp={args.damp_percent} pack={args.pack_impl}: {quant_s:.1f} s, "
        f"peak RSS {quant_rss:.0f} MB\n"
    )
    hdr = (
        f"{'model':<11} {'size MB':>8} {'x fp32':>7} {'ppl':>8} {'Δppl':>7} {'acc':>6} "
        f"{'agree':>6} {'tok/s':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name in models:
        r = q[name]
        print(
            f"{name:<11} {sizes[name] / 1e6:>8.1f} {sizes['fp32'] / sizes[name]:>6.2f}x "
            f"{r['perplexity']:>8.3f} {r['perplexity'] / fp_ppl - 1:>+6.1%} "
            f"{r['next_token_accuracy']:>6.3f} {r.get('agreement', 1.0):>6.3f} {speed[name]:>7.0f}"
        )
    g, rt = q[f"gptq int{args.bits}"], q[f"rtn int{args.bits}"]
    print("\ngoals:")
    print(
        f"  GPTQ better than RTN: ppl {g['perplexity']:.3f} vs {rt['perplexity']:.3f} -> "
        f"{'yes' if g['perplexity'] < rt['perplexity'] else 'NO'}"
    )
    inc = g["perplexity"] / fp_ppl - 1
    print(f"  ppl increase <= 10%: {inc:+.1%} -> {'yes' if inc <= 0.10 else 'NO'}")
    ratio = sizes["fp32"] / sizes[f"gptq int{args.bits}"]
    print(f"  >= 4x smaller than fp32: {ratio:.2f}x -> {'yes' if ratio >= 4 else 'NO'}")
    print(f"  RTN int{args.bits} speed equals GPTQ's (same kernel); RTN row is fake-quant fp32")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s; outputs in {work}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


# name -> QuantizeConfig overrides of the demo's quantize section (smollm2.yaml: group 64,
# mse 2.4, group-aware reordering, damp 0.01, 16x256 train rows); "calib_source" is the sweep's
KNOB_NAMES = ("damp_percent", "desc_act", "act_group_aware", "mse", "v2_alpha", "sym")
SWEEP: dict[str, dict] = {
    "demo": {},
    "g32 + mse": {"group_size": 32},
    "g128": {"group_size": 128},
    "mse off": {"mse": 0.0},
    "no GAR": {"act_group_aware": False},
    "desc_act": {"desc_act": True},
    "damp 0.05": {"damp_percent": 0.05},
    "damp 0.1": {"damp_percent": 0.1},
    "32 calib rows": {"calib_rows": 32},
    "64 calib rows": {"calib_rows": 64},
    "128 calib rows": {"calib_rows": 128},
    "teacher-generated calib": {"calib_source": "teacher"},
    "64 teacher-generated": {"calib_rows": 64, "calib_source": "teacher"},
    "v2 (GPTAQ a=0.25)": {"v2_alpha": 0.25},
}
DEFAULT_SWEEP = "demo,g32 + mse,damp 0.05,damp 0.1,64 calib rows,teacher-generated calib"


def demo_quantize_section() -> dict:
    """The demo's GPTQ settings (every knob of smollm2.yaml's quantize section but the engine,
    recovery and evaluation ones)."""
    import yaml

    demo = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "pipelines/configs/smollm2.yaml").read_text()
    )
    keep = ("group_size", "calib_rows", "calib_seq_len", "batch_size", *KNOB_NAMES)
    return {k: v for k, v in demo["quantize"].items() if k in keep}


def model_dirs(run: Path, model: str) -> tuple[Path, Path]:
    """(fp checkpoint, the run's own GPTQ checkpoint) of the student or the teacher."""
    if model == "student":
        return run / "student", run / "student-int4"
    from distill.models.config import GGUFSource
    from distill.models.loader import resolve_source

    return resolve_source(GGUFSource()).path, run / "teacher-int4"


def recovery_context(run: Path, work: Path, stack):
    """A quantize-stage context over the run's corpus and soft-label store, tracked in ``work``."""
    from distill.data.packed import PackedCorpus
    from distill.lineage.tracker import Tracker
    from distill.models.config import GGUFSource
    from distill.models.loader import resolve_source
    from distill.pipeline import load_config
    from distill.stages import StageContext

    demo = Path(__file__).resolve().parents[1] / "pipelines/configs/smollm2.yaml"
    cfg = load_config(demo, [f"workdir={work}"])
    teacher = resolve_source(GGUFSource())
    tracker = Tracker(cfg.tracking, work)
    stack.enter_context(tracker.pipeline("quantize-sweep"))
    st = stack.enter_context(tracker.stage("quantize"))
    artifacts = {"teacher": teacher.path, "soft_labels": run / "labels"}
    return StageContext(cfg, work, teacher, PackedCorpus.open(run / "data"), st, artifacts)


def sweep(args) -> None:
    """Each knob on the demo's settings, on the run's student or teacher: GPTQ time, held-out
    ppl of the checkpoint (GPT-QModel kernel, fp32) and of its CPU engine export (int8 tied
    head); then ``quantize.recover`` on the run's own GPTQ checkpoint: ppl before/after, seconds."""
    import contextlib

    import torch

    from distill.config.base import DistillError
    from distill.data.packed import read_rows
    from distill.eval.metrics import evaluate_models
    from distill.models.loader import load_causal_lm
    from distill.quant.calib import teacher_generations
    from distill.quant.checkpoint import weights_bytes
    from distill.quant.config import QuantizeConfig
    from distill.quant.gptq import load_quantized, quantize
    from distill.quant.rtn import fake_quantize_rtn
    from distill.runtime.config import EngineConfig
    from distill.runtime.export import export_ort_genai
    from distill.runtime.ort_genai import OrtGenAIModel
    from distill.runtime.torch_adapter import engine_as_torch

    t_start = time.perf_counter()
    base = demo_quantize_section()
    fp_dir, run_gptq = model_dirs(args.run, args.model)
    held = read_rows(args.run / "data" / "heldout.parquet", args.heldout_rows)
    train = read_rows(args.run / "data" / "train.parquet")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="quant-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    names = list(SWEEP) if args.sweep == "all" else [n.strip() for n in args.sweep.split(",") if n]
    engine_cfg = EngineConfig(kind="ort-genai", lm_head_bits=8, threads=args.threads)
    fp = load_causal_lm(fp_dir)
    fp_q = evaluate_models({"fp": fp}, held, 4)["fp"]
    fp_mb = weights_bytes(fp_dir) / 1e6
    results: dict[str, dict] = {}

    def measure(q_dir: Path) -> dict:
        q = load_quantized(q_dir, device="cpu", dtype="float32")
        r = evaluate_models({"fp": fp, "q": q}, held, 4, "fp")["q"]
        del q
        eng_dir = work / f"{q_dir.name}-cpu"
        export_ort_genai(q_dir, eng_dir, engine_cfg, group_size=32)
        eng = engine_as_torch(OrtGenAIModel.load(eng_dir, threads=args.threads))
        e = evaluate_models({"e": eng}, held, 4)["e"]
        mb = sum(f.stat().st_size for f in eng_dir.glob("model.onnx*")) / 1e6
        r.update(engine_ppl=e["perplexity"], engine_mb=mb, size_mb=weights_bytes(q_dir) / 1e6)
        return r

    for g in (base["group_size"], 32):
        rtn = copy.deepcopy(fp)
        fake_quantize_rtn(rtn, 4, g, sym=True)
        results[f"RTN g{g} (fake-quant)"] = evaluate_models({"fp": fp, "q": rtn}, held, 4, "fp")[
            "q"
        ]
        del rtn
    teacher_rows: dict = {}  # calib_rows -> rows the teacher generated
    for name in names:
        over = SWEEP[name]
        source = over.get("calib_source", "train")
        fields = {**base, **{k: v for k, v in over.items() if k != "calib_source"}}
        try:
            cfg = QuantizeConfig(**fields, device="cpu")
            rows = train
            if source == "teacher":
                if cfg.calib_rows not in teacher_rows:
                    from distill.models.config import GGUFSource
                    from distill.models.loader import resolve_source

                    t0 = time.perf_counter()
                    teacher = resolve_source(GGUFSource()).path
                    teacher_rows[cfg.calib_rows] = teacher_generations(
                        teacher, train, cfg.calib_rows, cfg.calib_seq_len
                    )
                    print(f"teacher generations: {time.perf_counter() - t0:.0f} s", flush=True)
                rows = teacher_rows[cfg.calib_rows]
            print(f"{name} ...", flush=True)
            t0 = time.perf_counter()
            if not over and (run_gptq / "config.json").exists():  # the run's own GPTQ = demo
                out, quant_s = run_gptq, float("nan")
            else:
                out = work / f"{args.model}-{name.replace(' ', '_').replace('+', '')}"
                out = quantize(fp_dir, cfg, rows, out)
                quant_s = time.perf_counter() - t0
        except (DistillError, ValueError) as e:
            results[name] = {"error": str(e).splitlines()[0][:150]}
            print(f"  {name}: refused: {results[name]['error']}", flush=True)
            continue
        results[name] = {**measure(out), "quant_s": quant_s}
        print(f"  {name}: {json.dumps(results[name])}", flush=True)

    steps = [int(x) for x in args.recover_steps.split(",") if x]
    if steps:
        from distill.quant.recover import recover

        with contextlib.ExitStack() as stack:
            ctx = recovery_context(args.run, work, stack)
            for n in steps:
                for lr in [float(x) for x in args.recover_lr.split(",")]:
                    rec = {"steps": n, "lr": lr, "num_workers": 1, "cpus_per_worker": 2}
                    rec.update(zero_stage=0, batch_size=args.recover_batch_size)
                    rec["target"] = args.recover_target
                    cfg = QuantizeConfig(**base, device="cpu", recover=rec)
                    print(f"recover {n} steps lr {lr:g} ...", flush=True)
                    t0 = time.perf_counter()
                    tag = f"{n}-lr{lr:g}-{args.recover_target}"
                    out_name = f"{args.model}-recovered-{tag}"
                    out, m = recover(ctx, cfg, run_gptq, output_name=out_name, fp_dir=fp_dir)
                    sec = time.perf_counter() - t0
                    name = f"recover {n} steps, lr {lr:g}, vs {args.recover_target}"
                    results[name] = {**measure(out), "quant_s": sec, **m}
                    print(f"  {name}: {json.dumps(results[name])}", flush=True)

    print(f"\n$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {describe()}; {time.strftime('%Y-%m-%d %H:%M')}; torch {torch.__version__}")
    print(
        f"{args.model}: {fp_dir} ({fp_mb:.1f} MB fp32); held-out {len(held)}x{held.shape[1]}; "
        f"base {base}; engine: ORT GenAI int4, GPTQ carried, int8 tied head"
    )
    hdr = (
        f"{'config':<34} {'sec':>5} {'ppl':>8} {'x fp':>6} {'acc':>6} {'agree':>6} {'KL':>6} "
        f"{'engine ppl':>10} {'x fp':>6} {'eng MB':>7} {'x fp':>5}"
    )
    print(hdr + "\n" + "-" * len(hdr))
    fpp = fp_q["perplexity"]
    print(
        f"{'fp32 ' + args.model:<34} {'':>5} {fpp:>8.3f} {1:>6.3f} {fp_q['next_token_accuracy']:>6.3f}"
    )
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<34} refused: {r['error']}")
            continue
        line = (
            f"{name:<34} {r.get('quant_s', 0):>5.0f} {r['perplexity']:>8.3f} "
            f"{r['perplexity'] / fpp:>6.3f} {r['next_token_accuracy']:>6.3f} "
            f"{r['agreement']:>6.3f} {r['kl_to_reference']:>6.3f}"
        )
        if "engine_ppl" in r:
            line += (
                f" {r['engine_ppl']:>10.3f} {r['engine_ppl'] / fpp:>6.3f} "
                f"{r['engine_mb']:>7.1f} {r['engine_mb'] / fp_mb:>5.3f}"
            )
        print(line)
    print(f"total wall time {time.perf_counter() - t_start:.0f} s; outputs in {work}")
    print("JSON " + json.dumps({"fp": fp_q, "fp_mb": fp_mb, **results}))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
