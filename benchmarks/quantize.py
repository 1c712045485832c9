"""GPTQ int4 vs round-to-nearest int4 vs the fp model, on the real teacher (SmolLM2-135M); with
``--run``, a sweep of GPT-QModel's knobs on a pipeline's student instead.

    .venv/bin/python benchmarks/quantize.py                                  # 16x256 calibration
    .venv/bin/python benchmarks/quantize.py --calib-rows 32 --calib-seq-len 512 --heldout-rows 32
    .venv/bin/python benchmarks/quantize.py --run runs/smollm2 --sweep all   # knobs on the student

Calibration rows come from the train documents only; held-out documents (every 10th stdlib file)
are never seen by GPTQ. Prints quantize time, size on disk (fp32, bf16, int4), held-out
perplexity / next-token accuracy / top-1 agreement with fp32, and forward tokens/s, then the
goals: GPTQ clearly better than RTN, <= 10% perplexity increase, >= 4x smaller than fp32.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


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
    ap.add_argument("--sweep", default="all", help=f"with --run: 'all' or names from {list(SWEEP)}")
    args = ap.parse_args()
    if args.run is not None:
        return sweep(args)

    import torch

    from distill.data.packing import stdlib_split_rows
    from distill.eval.metrics import evaluate_models, forward_tokens_per_s
    from distill.models.config import GGUFSource
    from distill.models.loader import load_causal_lm, load_tokenizer, resolve_source
    from distill.quant.config import QuantizeConfig
    from distill.quant.gptq import load_quantized, quantize
    from distill.quant.rtn import fake_quantize_rtn
    from distill.quant.stage import peak_rss_mb, weights_bytes
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
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
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


# name -> QuantizeConfig overrides of the demo's quantize section (group 64, 16x256 train rows)
SWEEP: dict[str, dict] = {
    "demo: g64 GAR damp.01": {},
    "g32": {"group_size": 32},
    "g128": {"group_size": 128},
    "no GAR": {"act_group_aware": False},
    "desc_act": {"desc_act": True},
    "mse 2.4": {"mse": 2.4},
    "damp 0.05": {"damp_percent": 0.05},
    "damp 0.1": {"damp_percent": 0.1},
    "64 calib rows": {"calib_rows": 64},
    "teacher-generated calib": {"calib_source": "teacher"},
    "v2 (GPTAQ a=0.25)": {"v2_alpha": 0.25},
}


def sweep(args) -> None:
    """Each knob alone on the run's student: quantize time, held-out ppl (GPT-QModel kernel)."""
    import torch
    import yaml

    from distill.config.base import DistillError
    from distill.data.packed import read_rows
    from distill.eval.metrics import evaluate_models
    from distill.models.loader import load_causal_lm
    from distill.quant.calib import teacher_generations
    from distill.quant.config import QuantizeConfig
    from distill.quant.gptq import load_quantized, quantize
    from distill.quant.rtn import fake_quantize_rtn
    from distill.quant.stage import weights_bytes

    t_start = time.perf_counter()
    demo = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "pipelines/configs/smollm2.yaml").read_text()
    )
    base = {
        k: v
        for k, v in demo["quantize"].items()
        if k in ("group_size", "calib_rows", "calib_seq_len", "batch_size")
    }
    student = args.run / "student"
    held = read_rows(args.run / "data" / "heldout.parquet", args.heldout_rows)
    train = read_rows(args.run / "data" / "train.parquet")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="quant-sweep-"))
    names = list(SWEEP) if args.sweep == "all" else [n.strip() for n in args.sweep.split(",")]
    fp = load_causal_lm(student)
    results: dict[str, dict] = {}
    for g in (64, 32):
        rtn = copy.deepcopy(fp)
        fake_quantize_rtn(rtn, 4, g, sym=True)
        results[f"RTN g{g}"] = evaluate_models({"fp": fp, "q": rtn}, held, 4, "fp")["q"]
        results[f"RTN g{g}"]["quant_s"] = 0.0
    teacher_rows = None
    for name in names:
        over = SWEEP[name]
        source = over.get("calib_source", "train")
        fields = {**base, **{k: v for k, v in over.items() if k != "calib_source"}}
        try:
            cfg = QuantizeConfig(**fields, device="cpu")
            rows = train
            if source == "teacher":
                if teacher_rows is None:
                    from distill.models.config import GGUFSource
                    from distill.models.loader import resolve_source

                    t0 = time.perf_counter()
                    teacher = resolve_source(GGUFSource()).path
                    teacher_rows = teacher_generations(
                        teacher, train, cfg.calib_rows, cfg.calib_seq_len
                    )
                    print(f"teacher generations: {time.perf_counter() - t0:.0f} s", flush=True)
                rows = teacher_rows
            print(f"{name} ...", flush=True)
            t0 = time.perf_counter()
            reuse = args.run / "student-int4"
            if not over and (reuse / "config.json").exists():  # the run's own GPTQ = the base
                out, quant_s = reuse, float("nan")
            else:
                out = quantize(student, cfg, rows, work / name.replace(" ", "_").replace(":", ""))
                quant_s = time.perf_counter() - t0
        except (DistillError, ValueError) as e:
            results[name] = {"error": str(e).splitlines()[0][:150]}
            print(f"  {name}: refused: {results[name]['error']}", flush=True)
            continue
        q = load_quantized(out, device="cpu")
        results[name] = evaluate_models({"fp": fp, "q": q}, held, 4, "fp")["q"]
        results[name].update(quant_s=quant_s, size_mb=weights_bytes(out) / 1e6)
        del q
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    fp_q = evaluate_models({"fp": fp}, held, 4)["fp"]

    print(f"\n$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; torch {torch.__version__}"
    )
    print(f"student: {student}; held-out {len(held)}x{held.shape[1]}; base {base}")
    hdr = f"{'config':<26} {'quant s':>7} {'ppl':>8} {'x fp':>6} {'acc':>6} {'agree':>6} {'KL':>6}"
    print(hdr + "\n" + "-" * len(hdr))
    print(
        f"{'fp32 student':<26} {'':>7} {fp_q['perplexity']:>8.3f} {1:>6.3f} {fp_q['next_token_accuracy']:>6.3f}"
    )
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<26} refused: {r['error']}")
            continue
        print(
            f"{name:<26} {r['quant_s']:>7.0f} {r['perplexity']:>8.3f} "
            f"{r['perplexity'] / fp_q['perplexity']:>6.3f} {r['next_token_accuracy']:>6.3f} "
            f"{r['agreement']:>6.3f} {r['kl_to_reference']:>6.3f}"
        )
    print(f"total wall time {time.perf_counter() - t_start:.0f} s; outputs in {work}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
