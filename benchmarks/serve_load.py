"""Serving under load (loopback only, bounded): the demo's student, teacher and cascade over HTTP
at several concurrencies, against the bare engine and the landed-main path in the same run.

    .venv/bin/python benchmarks/serve_load.py --student runs/smollm2/student
    .venv/bin/python benchmarks/serve_load.py --tiny          # tiny random models, ~2 min
    # the student hosted in the Router vs in replicas of its own, 4 alternating waves each
    .venv/bin/python benchmarks/serve_load.py --student runs/smollm2/student-int4-cpu \
        --student-engine onnxruntime-genai --baseline-student runs/smollm2/student \
        --student-placement router --compare-placement --rounds 4 --concurrency 1,16
    # against llama.cpp's llama-server (benchmarks/serve_llamacpp.py has the command)

Phases, all on this machine in one process tree:
  before     the landed main's model path: HF ``generate`` at batch 1 behind a lock
             (sequential whatever the concurrency), in-process;
  bare       the new batched engine (``engine: hf``) in-process, no HTTP, no Ray;
  student / teacher / cascade
             ``distill.serve`` from ``deploy/serve.yaml`` (student path replaced), streamed
             completions over HTTP on 127.0.0.1 at each concurrency, sent to the Router
             replica's own port (Serve's direct ingress, which ``distill serve`` prints);
             (with --compare-placement, a second app with the student at the other
             ``placement``, its waves alternating with these, --rounds times);
  student-proxy
             the student route again through Serve's proxy port, for comparison;
  fallback   cascade requests forced to fall back (threshold 1) with ``takeover: prompt`` and
             ``prefix``, at concurrency 1: latency vs the teacher alone, agreement with its answers;
  overload   a burst past ``limits.max_inflight``: how fast the 503s come back;
  speculative
             (not in the default phases) ``cascade.mode: speculative`` against the teacher
             alone, bare and over HTTP: ``benchmarks/serve_speculative.py``, draft ``--draft``.
Per row: output tokens/s, requests/s, p50 / p99 latency, time to first token, decode/req (p50
over requests of tokens/s after the first token), fallback rate and
errors. Prints the command, machine and date; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from distill.machine import describe

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_http.py, next to this file

import serve_llamacpp  # noqa: E402
from serve_http import row, run_ab, run_http, run_overload, similarity, wave  # noqa: E402

BARE_RAY_UP = "bare engine, Ray up"


def prompts(n: int, words: int = 24) -> list[str]:
    from distill.data.corpus import stdlib_files

    out: list[str] = []
    for f in stdlib_files()[100:]:
        toks = f.read_text(errors="replace").split()
        for i in range(0, max(0, len(toks) - words), words * 7):
            out.append(" ".join(toks[i : i + words]))
            if len(out) == n:
                return out
    return out


# -- in-process phases ---------------------------------------------------------------------------
def run_before(path: Path, texts: list[str], c: int, max_tokens: int, threads: int) -> dict:
    """Landed main: one ``generate`` at a time behind a lock (concurrent callers queue)."""
    import torch

    from distill.models.loader import load_causal_lm, load_tokenizer

    torch.set_num_threads(threads)
    model, tok = load_causal_lm(path), load_tokenizer(path)
    lock = threading.Lock()

    def one(p: str) -> dict:
        t0 = time.perf_counter()
        ids = torch.tensor([tok(p)["input_ids"]])
        with lock, torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                do_sample=False, pad_token_id=tok.eos_token_id, output_logits=True,
                return_dict_in_generate=True,
            )  # fmt: skip
        n = out.sequences.shape[1] - ids.shape[1]
        return {"status": 200, "latency": time.perf_counter() - t0, "tokens": n}

    one(texts[0])  # warm up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        results = list(pool.map(one, texts))
    return row("before (main: generate, lock)", c, results, time.perf_counter() - t0)


def run_bare(engine, texts: list[str], c: int, max_tokens: int) -> dict:
    return row("bare engine", c, *bare_wave(engine, texts, c, max_tokens))


def bare_wave(engine, texts: list[str], c: int, max_tokens: int) -> tuple[list[dict], float]:
    """``texts`` through the engine in this process, ``c`` at a time: (results, wall s)."""
    from distill.serve.engines.base import SamplingParams

    async def main() -> tuple[list[dict], float]:
        sem = asyncio.Semaphore(c)

        async def one(p: str) -> dict:
            async with sem:
                t0 = time.perf_counter()
                req = engine.prepare(prompt=p, params=SamplingParams(max_tokens=max_tokens))
                ttft, n, text = None, 0, ""
                try:
                    async for ch in engine.stream(req):
                        if ttft is None and ch.token_ids:
                            ttft = time.perf_counter() - t0
                        n += len(ch.token_ids)
                        text += ch.text
                except Exception as e:  # a benchmark counts failures, it does not stop
                    return {"status": type(e).__name__, "latency": time.perf_counter() - t0}
                return {"status": 200, "latency": time.perf_counter() - t0, "ttft": ttft,
                        "tokens": n, "text": text}  # fmt: skip

        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(p) for p in texts))
        return list(res), time.perf_counter() - t0

    return asyncio.run(main())


# -- the run ---------------------------------------------------------------------------------------
def serve_args(cli, student: str, teacher: str):
    """The serve config's args (deploy/serve.yaml by default) with the models swapped in."""
    import yaml

    from distill.serve.config import ServeArgs

    raw = yaml.safe_load(Path(cli.serve_config).read_text())
    args = raw["applications"][0]["args"]
    args["served_model_name"] = "bench"
    for role, ref in (("student", student), ("teacher", teacher)):
        args[role]["model"] = ref
        args[role]["torch_threads"] = cli.threads
    args["student"]["engine"] = cli.student_engine
    if cli.student_placement:
        args["student"]["placement"] = cli.student_placement
    max_tokens = cli.max_tokens
    args["max_tokens_limit"] = max(args["max_tokens_limit"], max_tokens, 256)
    return ServeArgs.model_validate(args)


def models(args) -> tuple[str, str]:
    if args.tiny:
        import tempfile

        from distill.models.config import TinySource
        from distill.models.loader import resolve_source

        cache = Path(tempfile.gettempdir()) / "distill-bench-serve"
        teacher = resolve_source(TinySource(num_hidden_layers=4, hidden_size=128), cache)
        student = resolve_source(TinySource(num_hidden_layers=2, hidden_size=128), cache)
        return args.student or str(student.path), str(teacher.path)
    if not args.student:
        sys.exit("give --student DIR (e.g. runs/smollm2/student) or --tiny")
    return args.student, args.teacher


def fmt(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    print(
        f"{'phase':<34}{'conc':>5}{'req':>5}{'tok/s':>9}{'req/s':>8}{'p50 s':>8}{'p99 s':>8}"
        f"{'TTFT p50':>10}{'decode/req':>11}{'fallback':>10}  errors"
    )
    for r in rows:
        if "tok_s" not in r:
            continue
        print(
            f"{r['name']:<34}{r['concurrency']:>5}{r['requests']:>5}{r['tok_s']:>9.1f}"
            f"{r['req_s']:>8.2f}{fmt(r['p50_s']):>8}{fmt(r['p99_s']):>8}{fmt(r['ttft_p50_s']):>10}"
            f"{fmt(r.get('decode_tok_s_p50'), '.1f'):>11}{fmt(r['fallback']):>10}  {r['errors'] or 0}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", help="student HF dir (runs/smollm2/student)")
    ap.add_argument("--teacher", default="gguf:default")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (--student kept)")
    ap.add_argument("--student-engine", default="hf", choices=["hf", "onnxruntime-genai"])
    ap.add_argument(
        "--student-placement",
        choices=["replica", "router"],
        help="the student's placement (default: the serve config's)",
    )
    ap.add_argument(
        "--compare-placement",
        action="store_true",
        help="also deploy the student at the other placement (a second app) and run the "
        "student waves on both, alternating, --rounds times",
    )
    ap.add_argument("--rounds", type=int, default=1, help="student waves per level and arm")
    ap.add_argument("--baseline-student", help="HF dir for the 'before' phase (default --student)")
    ap.add_argument("--serve-config", default=str(REPO / "deploy" / "serve.yaml"))
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--min-requests", type=int, default=8, help="requests per level (>= conc)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per model")
    ap.add_argument(
        "--phases", default="before,bare,student,student-proxy,teacher,cascade,fallback,overload"
    )
    ap.add_argument("--draft", help="phase speculative: the draft (default: --student)")
    ap.add_argument(
        "--draft-engine", default="onnxruntime-genai", choices=["hf", "onnxruntime-genai"]
    )
    ap.add_argument("--ks", default="auto,4", help="phase speculative: draft lengths")
    ap.add_argument("--arms", default="bare,http", help="phase speculative: bare, http or both")
    ap.add_argument("--time-limit", type=float, default=1800, help="seconds for all phases")
    ap.add_argument("--json", help="write the rows here")
    serve_llamacpp.add_args(ap)
    args = ap.parse_args()
    deadline = time.perf_counter() + args.time_limit
    levels = [int(x) for x in args.concurrency.split(",")]
    phases = set(args.phases.split(","))
    student, teacher = models(args)
    n_max = max(max(levels), args.min_requests)
    texts = prompts(n_max)
    rows: list[dict] = []
    skipped: list[str] = []

    def level_texts(c: int) -> list[str]:
        return texts[: max(c, args.min_requests)]

    def timed_out(what: str) -> bool:
        if time.perf_counter() > deadline:
            skipped.append(what)
            return True
        return False

    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {describe()}; {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"student {student}; teacher {teacher}; {args.max_tokens} tokens/answer, greedy")
    from distill.serve.app import resolve_model

    spath = resolve_model(student)[0]
    if "before" in phases and not timed_out("before"):
        base = resolve_model(args.baseline_student or student)[0]
        for c in (1, 4):
            rows.append(run_before(base, level_texts(c), c, args.max_tokens, args.threads))
            print_table(rows[-1:])
    if "bare" in phases and not timed_out("bare"):
        from distill.serve.engines import EngineOptions, build_engine

        sa = serve_args(args, student, teacher)
        b = sa.student.batching
        engine = build_engine(
            args.student_engine, spath, EngineOptions(threads=args.threads, batching=b)
        )
        run_bare(engine, texts[:2], 2, 4)  # warm up
        for c in levels:
            if timed_out(f"bare c={c}"):
                break
            rows.append(run_bare(engine, level_texts(c), c, args.max_tokens))
            rows[-1]["name"] = f"bare engine ({args.student_engine})"
            print_table(rows[-1:])
    else:
        engine = None
    http_phases = phases - {"before", "bare"}
    llama = serve_llamacpp.LlamaArm(args, spath) if args.llamacpp_model else None
    try:
        if http_phases and not timed_out("http"):
            rows += run_serve_phases(args, student, teacher, levels, level_texts, timed_out,
                                     phases, engine, [llama.arm()] if llama else [])  # fmt: skip
    finally:
        if llama:
            llama.stop()
    if engine is not None:
        engine.close()
    spec_rows = []
    if "speculative" in phases and not timed_out("speculative"):
        import serve_speculative

        if not args.draft:  # the student drafts for the teacher
            args.draft, args.draft_engine = student, args.student_engine
        spec_rows = serve_speculative.run_speculative(args, teacher, level_texts, levels)
    print()
    print_table(rows + spec_rows)
    summary(rows)
    if llama:
        serve_llamacpp.summary(rows, llama)
        rows.append({"name": "held-out ppl", **llama.ppl})
    if spec_rows and not serve_speculative.summary(spec_rows):
        return 1
    if skipped:
        print(f"SKIPPED (time limit {args.time_limit:.0f} s): {', '.join(skipped)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


def run_serve_phases(
    args, student, teacher, levels, level_texts, timed_out, phases, engine=None, extra_arms=()
) -> list[dict]:
    """The HTTP phases; ``engine`` (the bare phase's, still loaded) joins the student waves as
    an arm of its own: the bare engine with the Ray cluster up, in the same minutes; so do
    ``extra_arms`` (``(name, wave_fn)``: llama-server)."""
    import ray
    from ray import serve

    from distill.serve.app import build_app
    from distill.serve.config import apply_serve_env

    rows: list[dict] = []
    apply_serve_env()  # what `distill serve` runs with (RAY_SERVE_THROUGHPUT_OPTIMIZED=1)
    # logical CPUs: each app reserves 2.0 (router 0.1 + 2 x 0.95, as on a 2-CPU node)
    ray.init(num_cpus=5 if args.compare_placement else 3, include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        proxy = s.getsockname()[1]
    sa = serve_args(args, student, teacher)
    try:
        t0 = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": proxy})
        serve.run(build_app(sa), name="bench", route_prefix="/")
        print(f"serve.run {time.perf_counter() - t0:.1f} s; cascade {sa.cascade.model_dump()}")
        port = direct_port(proxy, "bench")
        print(f"HTTP to the Router replica's own port {port} (proxy: {proxy})")

        def http_arm(p: int, prefix: str):
            return lambda texts, c: wave(
                p, "bench-student", texts, c, args.max_tokens, None, prefix
            )

        arms = [("http student", http_arm(port, ""))]
        if engine is not None:
            arms.insert(0, (BARE_RAY_UP, lambda t, c: bare_wave(engine, t, c, args.max_tokens)))
        if args.compare_placement:
            other = "router" if sa.student.placement == "replica" else "replica"
            sb = sa.model_copy(
                update={"student": sa.student.model_copy(update={"placement": other})}
            )
            serve.run(build_app(sb), name="bench-b", route_prefix="/b")
            arms.append((f"http student ({other})", http_arm(direct_port(proxy, "bench-b"), "/b")))
            print(f"student placement {sa.student.placement} (bench) vs {other} (bench-b, /b)")
        arms += list(extra_arms)
        warm = level_texts(1)[:2]
        for _name, wave_fn in arms:
            wave_fn(warm, 1)
        for p, model in ((port, "bench-teacher"), (proxy, "bench")):
            run_http(p, "warm", model, warm, 1, 8)
        if "student" in phases:
            for c in levels:
                if timed_out(f"student c={c}"):
                    break
                got = run_ab(arms, level_texts(c), c, args.rounds)
                rows += got
                print_table(got)
        routes = [
            ("student-proxy", "bench-student", proxy),
            ("teacher", "bench-teacher", port),
            ("cascade", "bench", port),
        ]
        for name, model, p in routes:
            if name not in phases:
                continue
            for c in levels:
                if timed_out(f"{name} c={c}"):
                    break
                label = "http student via proxy" if name == "student-proxy" else f"http {name}"
                rows.append(run_http(p, label, model, level_texts(c), c, args.max_tokens))
                print_table(rows[-1:])
        rows += run_fallback_and_overload(args, sa, port, level_texts, timed_out, phases)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def run_fallback_and_overload(args, sa, port, level_texts, timed_out, phases) -> list[dict]:
    rows: list[dict] = []
    if "fallback" in phases and not timed_out("fallback"):
        texts = level_texts(1)
        alone = run_http(port, "http teacher alone", "bench-teacher", texts, 1, args.max_tokens)
        rows.append(alone)
        for takeover in ("prompt", "prefix"):
            forced = {"threshold": 1.0, "takeover": takeover}
            r = run_http(port, f"http fallback ({takeover})", "bench", texts, 1,
                         args.max_tokens, forced)  # fmt: skip
            r["vs_teacher_p50"] = (r["p50_s"] or 0) / (alone["p50_s"] or float("nan"))
            r["agree_exact"], r["agree_ratio"] = similarity(r["texts"], alone["texts"])
            rows.append(r)
        print_table(rows[-3:])
    if "overload" in phases and not timed_out("overload"):
        burst = sa.limits.max_inflight + 8 + sa.limits.max_queued + 16
        rows.append(run_overload(port, "bench-student", burst))
        print(rows[-1])
    return rows


def direct_port(proxy_port: int, app: str) -> int:
    """The Router replica's direct-ingress port (what ``distill serve`` prints and a cluster's
    HAProxy sends traffic to); the proxy's port when direct ingress is off."""
    from distill.serve.ingress import direct_ingress_urls

    urls = direct_ingress_urls(app, "127.0.0.1", proxy_port)
    return int(urls[0].rsplit(":", 1)[1]) if urls else proxy_port


def summary(rows: list[dict]) -> None:
    """The issue's goals as ratios measured in this run."""

    def get(name: str, c: int) -> dict | None:
        return next((r for r in rows if r["name"] == name and r["concurrency"] == c), None)

    before = [r["tok_s"] for r in rows if r["name"].startswith("before")]
    s16, s1, b1 = (
        get("http student", 16),
        get("http student", 1),
        next(
            (r for r in rows if r["name"].startswith("bare engine (") and r["concurrency"] == 1),
            None,
        ),
    )
    bu = get(BARE_RAY_UP, 1)
    print("\ngoals (measured in this run):")
    if before and s16:
        print(
            f"  16-way student tok/s / best 'before' tok/s: {s16['tok_s'] / max(before):.1f}x (goal >= 10x)"
        )
    if s1:
        print(
            f"  single request, HTTP student: {s1['tok_s']:.1f} tok/s end to end (goal >= 100); "
            f"after the first token {fmt(s1.get('decode_tok_s_p50'), '.1f')} tok/s (p50 per request)"
        )
    if s1 and bu and bu["p50_s"]:
        over = s1["p50_s"] / bu["p50_s"] - 1
        wins = sum(x < y for x, y in zip(s1["rounds_tok_s"], bu["rounds_tok_s"], strict=True))
        print(
            f"  HTTP + Router overhead at c=1 (p50 latency, vs the bare engine in this process "
            f"in alternating waves, Ray up): {over * 100:+.1f}% (goal <= 10%); HTTP slower in "
            f"{wins} of {len(bu['rounds_tok_s'])} waves"
        )
    if s1 and b1 and b1["p50_s"]:
        over = s1["p50_s"] / b1["p50_s"] - 1
        print(
            f"  the serving stack at c=1 (p50 latency, vs the bare engine before Ray started: "
            f"HTTP + Router + Ray's own processes + drift between the phases): {over * 100:+.1f}%"
        )
    for c in (1, 16):
        d, viaproxy = get("http student", c), get("http student via proxy", c)
        if d and viaproxy and viaproxy["tok_s"]:
            print(
                f"  c={c}: direct to the Router replica {d['tok_s']:.1f} tok/s, through Serve's "
                f"proxy {viaproxy['tok_s']:.1f} ({d['tok_s'] / viaproxy['tok_s']:.2f}x)"
            )
    for r in rows:
        if r["name"].startswith("http student (") and r.get("rounds_tok_s"):
            a = get("http student", r["concurrency"])
            if a and a.get("rounds_tok_s"):
                wins = sum(x > y for x, y in zip(a["rounds_tok_s"], r["rounds_tok_s"], strict=True))
                print(
                    f"  c={r['concurrency']}: http student {a['tok_s']:.1f} tok/s (p50 "
                    f"{fmt(a['p50_s'])} s) vs {r['name']} {r['tok_s']:.1f} (p50 {fmt(r['p50_s'])}"
                    f" s): {a['tok_s'] / r['tok_s']:.2f}x, ahead in {wins} of "
                    f"{len(a['rounds_tok_s'])} alternating waves"
                )
    if s1 and s1["ttft_p50_s"] and s1["p50_s"]:
        print(
            f"  TTFT p50 / full latency p50 at c=1: {s1['ttft_p50_s'] / s1['p50_s']:.2f} (goal <= 0.2)"
        )
    for r in rows:
        if r["name"].startswith("http fallback"):
            print(
                f"  {r['name']}: latency {r['vs_teacher_p50']:.2f}x the teacher alone (goal <= 1.25); "
                f"same answer as the teacher {r['agree_exact']:.2f}, similarity {r['agree_ratio']:.2f}"
            )
        if r["name"] == "overload burst":
            print(
                f"  overload: {r['refused_503']} of {r['requests']} refused with 503, p99 "
                f"{fmt(r['refused_p99_s'])} s (goal <= 1 s); other errors {r['other_errors'] or 0}"
            )
            for src, v in r.get("refused_by", {}).items():
                print(
                    f"    refused by {src}: {v['n']}, p50 {fmt(v['p50_s'])} s, p99 {fmt(v['p99_s'])} s"
                )
    errs = sum(sum(r.get("errors", {}).values()) for r in rows if r["name"] != "overload burst")
    print(f"  errors outside the overload burst: {errs}")


if __name__ == "__main__":
    raise SystemExit(main())
