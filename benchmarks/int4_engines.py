"""CPU int4 runtimes side by side on the demo student and the teacher: HF fp32 generate (the
reference), ONNX Runtime GenAI int4 (MatMulNBits) built several ways (the engine's own RTN /
k-quant from the fp model, or the run's GPTQ checkpoint carried; LM head int4 shared with the
embedding, or int8 with the embedding tied to it), optionally GPT-QModel's CPU kernel and
OpenVINO GenAI + NNCF int4 (from a throwaway venv: its optimum-intel extra replaces packages of ours).

    .venv/bin/python benchmarks/int4_engines.py --run runs/smollm2              # student, teacher
    .venv/bin/python benchmarks/int4_engines.py --run runs/smollm2 --models student \\
        --extra-gptq "student:recovered=/tmp/sweep/student-recovered" --openvino-python /tmp/ov/bin/py

``--run`` is a pipeline workdir after ``quantize`` (``student/``, ``student-int4/`` = GPTQ,
``teacher-int4/`` = the teacher's GPTQ, ``data/heldout.parquet``); the fp teacher is the packaged
GGUF's checkpoint. Per model and runtime: held-out perplexity (the same rows for all), prefill
tokens/s (8 prompts x 128 tokens), decode tokens/s at batch 1 and 8 (64 greedy tokens, no early
stop; median of ``--rounds`` rounds that alternate the runtimes), size on disk, export time;
ratios to the model's HF fp32. Every runtime gets the same thread count.
Goals (issue 28): decode at batch 1 >= 8x HF fp32, size <= 0.2x fp32, ppl <= 1.10x fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from distill.machine import describe

PROMPT_LEN, NEW_TOKENS = 128, 64

# name -> (source, EngineConfig fields); "gptq" = the run's GPTQ checkpoint of the model,
# "fp" = the fp model (the engine quantizes it itself); --extra-gptq adds GPTQ checkpoints
ORT_VARIANTS = {
    "ort fp→rtn g32, head int4": ("fp", {"algo": "rtn", "block_size": 32}),
    "ort fp→k_quant g32, head int4": ("fp", {"algo": "k_quant", "block_size": 32}),
    "ort fp→rtn g32, int8 tied": ("fp", {"algo": "rtn", "block_size": 32, "lm_head_bits": 8}),
    "ort fp→k_quant g32, int8 tied": ("fp", {"block_size": 32, "lm_head_bits": 8}),
    "ort fp→q4_1 grid, int8 tied": ("fp", {"algo": "q4_1", "lm_head_bits": 8}),
    "ort gptq, head int4 rtn": ("gptq", {"algo": "rtn"}),
    "ort gptq, int8 tied": ("gptq", {"lm_head_bits": 8}),
    "ort gptq, int8 tied b64": ("gptq", {"lm_head_bits": 8, "lm_head_block_size": 64}),
    "ort gptq, int8 head, fp32 emb": ("gptq", {"lm_head_bits": 8, "embedding_bits": 32}),
    "ort gptq acc1 (fp32 act)": ("gptq", {"accuracy_level": 1}),
}
DEFAULT_VARIANTS = ";".join(
    [
        "ort fp→rtn g32, head int4",
        "ort fp→k_quant g32, head int4",
        "ort fp→rtn g32, int8 tied",
        "ort fp→k_quant g32, int8 tied",
        "ort fp→q4_1 grid, int8 tied",
        "ort gptq, head int4 rtn",
        "ort gptq, int8 tied",
        "ort gptq, int8 tied b64",
    ]
)


def size_mb(path: Path, pattern: str) -> float:
    return sum(f.stat().st_size for f in Path(path).glob(pattern)) / 1e6


# ---- HF / GPT-QModel (torch) ---------------------------------------------------------------


def torch_quality(model, held: np.ndarray, prompts: np.ndarray, bs: int = 4) -> dict[str, float]:
    """Held-out perplexity and prefill tokens/s of an HF model."""
    import torch

    nll, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(held), bs):
            ids = torch.as_tensor(held[i : i + bs], dtype=torch.long)
            logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
            nll -= logp.gather(-1, ids[:, 1:, None]).sum().item()
            n += ids[:, 1:].numel()
        out = {"ppl": math.exp(nll / n)}
        p8 = torch.as_tensor(prompts, dtype=torch.long)
        model(input_ids=p8[:1, :8])  # warm-up
        t0 = time.perf_counter()
        model(input_ids=p8)
        out["prefill_tps"] = p8.numel() / (time.perf_counter() - t0)
    return out


def torch_decode(model, prompts: np.ndarray, b: int) -> float:
    """Decode tokens/s of HF ``generate`` at batch ``b`` (the prefill's time subtracted)."""
    import torch

    ids = torch.as_tensor(prompts[:b], dtype=torch.long)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=True)
        pre = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        )
        gen = time.perf_counter() - t0
    return b * (NEW_TOKENS - 1) / max(gen - pre, 1e-9)


# ---- ONNX Runtime GenAI ----------------------------------------------------------------------


def ort_quality(m, held: np.ndarray, prompts: np.ndarray) -> dict[str, float]:
    """Held-out perplexity and prefill tokens/s of an ``OrtGenAIModel``."""
    lp = np.concatenate([m.logprobs(held[i : i + 4]).ravel() for i in range(0, len(held), 4)])
    out = {"ppl": float(np.exp(-lp.mean()))}
    m.logits(prompts[:1, :8])
    t0 = time.perf_counter()
    m.logits(prompts)
    out["prefill_tps"] = prompts.size / (time.perf_counter() - t0)
    return out


def ort_decode(m, prompts: np.ndarray, b: int) -> float:
    """Decode tokens/s at batch ``b``: 63 steps after the prefill's token, no early stop."""
    og = m._og
    params = og.GeneratorParams(m._model)
    total = PROMPT_LEN + NEW_TOKENS
    params.set_search_options(max_length=total, min_length=total, batch_size=b)
    gen = og.Generator(m._model, params)
    gen.append_tokens(prompts[:b].astype(np.int32))
    gen.generate_next_token()  # the first token comes from the prefill's logits
    t0 = time.perf_counter()
    for _ in range(NEW_TOKENS - 1):
        gen.generate_next_token()
    return b * (NEW_TOKENS - 1) / (time.perf_counter() - t0)


# ---- OpenVINO GenAI (runs in its own venv: `--child openvino`) --------------------------------


def openvino_child(args) -> None:
    """Export with optimum-intel (NNCF int4 sym, group 64, ratio 1.0) and measure; prints JSON."""
    import openvino_genai as ov_genai

    t0 = time.perf_counter()
    cmd = [
        str(Path(sys.executable).parent / "optimum-cli"),
        "export",
        "openvino",
        "-m",
        str(args.model),
        "--task",
        "text-generation-with-past",
        "--weight-format",
        "int4",
        "--sym",
        "--group-size",
        str(args.group_size),
        "--ratio",
        "1.0",
        str(args.out),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    export_s = time.perf_counter() - t0
    held, prompts = np.load(args.held), np.load(args.prompts)
    cfg = {"INFERENCE_NUM_THREADS": args.threads}
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(args.out / "openvino_model.xml"), "CPU", cfg)
    nll, n = 0.0, 0
    for row in held:  # stateful model: one row per request, cache reset between rows
        req = compiled.create_infer_request()
        req.reset_state()
        ids = row[None].astype(np.int64)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1])[None],
            "beam_idx": np.zeros(1, np.int32),
        }
        logits = req.infer(feed)["logits"][0, :-1].astype(np.float64)
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        nll -= logp[np.arange(len(row) - 1), row[1:]].sum()
        n += len(row) - 1
    out = {"ppl": math.exp(nll / n), "export_s": export_s}
    req = compiled.create_infer_request()
    req.reset_state()
    p = prompts[:8].astype(np.int64)
    t0 = time.perf_counter()
    req.infer(
        {
            "input_ids": p,
            "attention_mask": np.ones_like(p),
            "position_ids": np.tile(np.arange(p.shape[1]), (len(p), 1)),
            "beam_idx": np.arange(len(p), dtype=np.int32),
        }
    )
    out["prefill_tps"] = p.size / (time.perf_counter() - t0)
    pipe = ov_genai.LLMPipeline(str(args.out), "CPU", **cfg)
    gcfg = ov_genai.GenerationConfig()
    gcfg.max_new_tokens = gcfg.min_new_tokens = NEW_TOKENS
    for b in (1, 8):
        toks = [ov.Tensor(prompts[i : i + 1].astype(np.int64)) for i in range(b)]
        pipe.generate(toks[0], gcfg)  # warm-up
        t0 = time.perf_counter()
        if b == 1:
            res = pipe.generate(toks[0], gcfg)
        else:  # batched: one TokenizedInputs of b rows
            ids = ov.Tensor(prompts[:b].astype(np.int64))
            res = pipe.generate(
                ov_genai.TokenizedInputs(ids, ov.Tensor(np.ones_like(prompts[:b]))), gcfg
            )
        dt = time.perf_counter() - t0
        ttft = res.perf_metrics.get_ttft().mean / 1000.0  # ms -> s: the prefill
        out[f"decode_b{b}"] = b * (NEW_TOKENS - 1) / max(dt - ttft, 1e-9)
    out["size_mb"] = size_mb(args.out, "openvino_model.bin")
    print("OVJSON " + json.dumps(out))


def openvino_row(py: str, student: Path, held, prompts, work: Path, threads: int, group: int):
    np.save(work / "held.npy", held)
    np.save(work / "prompts.npy", prompts)
    cmd = [py, __file__, "--child", "openvino", "--model", str(student), "--out", str(work / "ov")]
    cmd += ["--held", str(work / "held.npy"), "--prompts", str(work / "prompts.npy")]
    cmd += ["--threads", str(threads), "--group-size", str(group)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("OVJSON "):
            return json.loads(line[7:])
    print(f"  openvino failed:\n{(proc.stderr or proc.stdout)[-2000:]}", flush=True)
    return None


# ---- install timing --------------------------------------------------------------------------


def pip_install_seconds(packages: list[str]) -> float:
    """Wall time of installing ``packages`` (wheels, no deps re-resolution) into a temp dir."""
    d = tempfile.mkdtemp(prefix="pip-timing-")
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", d, *packages],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)


ORT_PACKAGES = [
    "onnxruntime-genai==0.18.0",
    "onnxruntime==1.32.0",
    "onnx==1.23.2",
    "onnx-ir==1.1.0",
    "onnxscript==0.7.2",
    "ml_dtypes==0.7.0",
    "flatbuffers==25.12.19",
]


def model_dirs(run: Path, model: str) -> tuple[Path, Path]:
    """(fp checkpoint, the run's GPTQ checkpoint) of the student or the teacher."""
    if model == "student":
        return run / "student", run / "student-int4"
    from distill.models.config import GGUFSource
    from distill.models.loader import resolve_source

    return resolve_source(GGUFSource()).path, run / "teacher-int4"


def measure_model(args, model: str, held, prompts, work: Path, install_ort: float) -> dict:
    """Every row of one model: quality once, then decode speed in alternating rounds."""
    import torch

    from distill.models.loader import load_causal_lm
    from distill.quant.gptq import load_quantized
    from distill.runtime.config import EngineConfig
    from distill.runtime.export import export_ort_genai
    from distill.runtime.ort_genai import OrtGenAIModel
    from distill.runtime.q4_1 import is_q4_1_checkpoint

    fp_dir, gptq = model_dirs(args.run, model)
    sources = {"fp": fp_dir, "gptq": gptq}
    variants = {n.strip(): ORT_VARIANTS[n.strip()] for n in args.variants.split(";") if n.strip()}
    for label, path in args.extra_gptq.get(model, {}).items():
        sources[label] = path
        variants[f"ort gptq ({label}), int8 tied"] = (label, {"lm_head_bits": 8})
    group = json.loads((gptq / "config.json").read_text())["quantization_config"]["group_size"]
    rows: dict[str, dict] = {}
    runners: dict[str, object] = {}  # name -> decode(b) callable
    print(f"{model}: HF fp32 ...", flush=True)
    hf = load_causal_lm(fp_dir)
    rows["HF fp32 generate"] = torch_quality(hf, held, prompts)
    rows["HF fp32 generate"].update(size_mb=size_mb(fp_dir, "*.safetensors"), export_s=0.0)
    runners["HF fp32 generate"] = lambda b, m=hf: torch_decode(m, prompts, b)
    if args.gptqmodel_rows:
        q = load_quantized(gptq, device="cpu", dtype="float32")
        rows["GPT-QModel torch kernel"] = torch_quality(q, held, prompts)
        rows["GPT-QModel torch kernel"].update(size_mb=size_mb(gptq, "*.safetensors"), export_s=0)
        runners["GPT-QModel torch kernel"] = lambda b, m=q: torch_decode(m, prompts, b)
    for name, (source, fields) in variants.items():
        if source not in sources:
            continue
        if fields.get("algo") == "q4_1" and not is_q4_1_checkpoint(fp_dir):
            continue  # not a GGUF Q4_1 model (the student)
        cfg = EngineConfig(kind="ort-genai", source="fp" if source == "fp" else "gptq", **fields)
        if source != "fp" and not (sources[source] / "config.json").exists():
            continue
        slug = name.replace(" ", "_").replace("→", "-").replace(",", "").replace("(", "")
        out = work / f"{model}-{slug.replace(')', '')}"
        print(f"{model}: {name} ...", flush=True)
        t0 = time.perf_counter()
        export_ort_genai(sources[source], out, cfg, group_size=group)
        export_s = time.perf_counter() - t0
        m = OrtGenAIModel.load(out, threads=args.threads)
        rows[name] = ort_quality(m, held, prompts)
        rows[name].update(size_mb=size_mb(out, "model.onnx*"), export_s=export_s)
        rows[name]["install_s"] = install_ort
        runners[name] = lambda b, m=m: ort_decode(m, prompts, b)
    if args.openvino_python and model == "student":
        print("openvino ...", flush=True)
        r = openvino_row(args.openvino_python, fp_dir, held, prompts, work, args.threads, group)
        if r is not None:
            rows[f"openvino nncf int4 sym g{group}"] = r
    for run in runners.values():  # warm-up, then rounds that alternate the runtimes
        run(1)
    for b in (1, 8):
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                times[name].append(run(b))
        for name, ts in times.items():
            rows[name][f"decode_b{b}"] = float(np.median(ts))
    del hf, runners
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def print_table(model: str, rows: dict[str, dict]) -> None:
    ref = rows["HF fp32 generate"]
    print(f"\n{model} (ratios to its HF fp32):")
    hdr = (
        f"{'runtime':<32} {'size MB':>8} {'x fp32':>6} {'ppl':>7} {'x fp32':>6} {'prefill':>8} "
        f"{'dec b1':>7} {'x fp32':>6} {'dec b8':>7} {'export s':>8}"
    )
    print(hdr + "\n" + "-" * len(hdr))
    for name, r in rows.items():
        rd = r.get("decode_b1", float("nan")) / ref["decode_b1"]
        print(
            f"{name:<32} {r['size_mb']:>8.1f} {r['size_mb'] / ref['size_mb']:>6.3f} "
            f"{r['ppl']:>7.2f} {r['ppl'] / ref['ppl']:>6.3f} {r['prefill_tps']:>8.0f} "
            f"{r.get('decode_b1', float('nan')):>7.1f} {rd:>6.1f} "
            f"{r.get('decode_b8', float('nan')):>7.1f} {r['export_s']:>8.0f}"
        )
    print("goals (decode b1 >= 8x, size <= 0.2x, ppl <= 1.10x HF fp32):")
    for name, r in rows.items():
        if name == "HF fp32 generate":
            continue
        ok = (
            r.get("decode_b1", 0) >= 8 * ref["decode_b1"],
            r["size_mb"] <= 0.2 * ref["size_mb"],
            r["ppl"] <= 1.10 * ref["ppl"],
        )
        missed = [k for k, good in zip(("speed", "size", "ppl"), ok, strict=True) if not good]
        print(f"  {name:<32} {'MET' if all(ok) else 'missed: ' + ', '.join(missed)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, help="pipeline workdir after quantize")
    ap.add_argument("--models", default="student,teacher")
    ap.add_argument("--heldout-rows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="decode rounds (median)")
    ap.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"';'-separated, from {list(ORT_VARIANTS)}"
    )
    ap.add_argument(
        "--extra-gptq",
        default="",
        help="'model:label=GPTQ dir,...': more GPTQ checkpoints (other knobs, recovered), int8 tied",
    )
    ap.add_argument("--gptqmodel-rows", action="store_true", help="add GPT-QModel's CPU kernel")
    ap.add_argument("--openvino-python", default=None, help="python of a venv with optimum-intel")
    ap.add_argument("--workdir", type=Path, default=None, help="keep exports here (default: tmp)")
    ap.add_argument("--child", choices=["openvino"], help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--held", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--group-size", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "openvino":
        return openvino_child(args)
    if args.run is None:
        ap.error("--run is required")
    extra: dict[str, dict[str, Path]] = {}
    for item in (x for x in args.extra_gptq.split(",") if x.strip()):
        key, path = item.split("=", 1)
        model, label = key.split(":", 1)
        extra.setdefault(model.strip(), {})[label.strip()] = Path(path.strip())
    args.extra_gptq = extra

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from distill.data.packed import read_rows

    t_start = time.perf_counter()
    held = read_rows(args.run / "data" / "heldout.parquet", args.heldout_rows)
    prompts = held[:8, :PROMPT_LEN].astype(np.int64)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="int4-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    install_ort = pip_install_seconds(ORT_PACKAGES)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    tables = {m: measure_model(args, m, held, prompts, work, install_ort) for m in models}

    print(f"\n$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {describe()}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; threads {args.threads}; torch {torch.__version__}"
    )
    print(
        f"held-out {len(held)}x{held.shape[1]}; prompts 8x{PROMPT_LEN}, {NEW_TOKENS} greedy "
        f"tokens, median of {args.rounds} alternating rounds; ORT wheels install "
        f"{install_ort:.0f} s (--no-deps, warm cache)"
    )
    for model, rows in tables.items():
        print_table(model, rows)
    print(f"total wall time {time.perf_counter() - t_start:.0f} s; exports in {work}")
    print("JSON " + json.dumps(tables))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
