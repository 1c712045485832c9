"""Speculative decoding against the teacher alone, in one run on one box: the demo's teacher (HF
fp32, as ``deploy/serve.yaml`` and ``deploy/serve-speculative.yaml`` serve it) verifying the drafts
of the student (the int4 ONNX Runtime GenAI export by default), greedy, at each concurrency.

    .venv/bin/python benchmarks/serve_speculative.py --draft runs/smollm2/student-int4-cpu
    .venv/bin/python benchmarks/serve_speculative.py --tiny          # tiny random pair, ~1 min
    # the same rows from serve_load.py:
    .venv/bin/python benchmarks/serve_load.py --student runs/smollm2/student-int4-cpu \
        --student-engine onnxruntime-genai --phases speculative

Arms, their waves alternating (A B C, C B A, ...) ``--rounds`` times per concurrency level:
  bare teacher alone        ``HFEngine`` (teacher + draft loaded) in this process, no drafting;
  bare speculative k=K      the same engine, the student drafting K tokens per step (``auto``:
                            ``DraftLength`` picks K per batch size from measured tokens/s);
  http teacher alone        the Serve app built with ``cascade.mode: speculative``, its
                            ``-teacher`` route (the teacher alone, same replica);
  http speculative          the app's cascade route (the student drafts, the teacher verifies).
Before the arms, the costs that decide the outcome: the teacher's forward over T tokens per row
(T = 1 is a plain decode step, T = k + 1 a verification) and one drafted token, at 1 and 16 rows.
Every speculative answer is checked against the teacher alone's, prompt by prompt (greedy: they
must be identical); the run exits 1 if one differs. Prints tokens/s, latency, the acceptance rate
(draft tokens the teacher kept / drafted), the ratios to the teacher alone, the command, machine
and date.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import socket
import sys
import time
from pathlib import Path

from distill.machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_http import run_ab, wave  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ALONE = "teacher alone"


# -- arms ------------------------------------------------------------------------------------------
def bare_wave(engine, texts: list[str], c: int, max_tokens: int, k) -> tuple[list[dict], float]:
    """``texts`` through the engine, ``c`` at a time, drafting ``k`` tokens per step (``None``:
    the teacher alone; ``"auto"``: adaptive): (results, wall seconds)."""
    from dataclasses import replace

    from distill.serve.engines.base import SamplingParams, Speculation

    spec = None if k is None else Speculation(None if k == "auto" else int(k), max_k=8)

    async def main() -> tuple[list[dict], float]:
        sem = asyncio.Semaphore(c)

        async def one(p: str) -> dict:
            async with sem:
                t0 = time.perf_counter()
                req = engine.prepare(prompt=p, params=SamplingParams(max_tokens=max_tokens))
                req = replace(req, speculation=spec)
                ttft, ids, text, drafted, accepted = None, [], "", 0, 0
                async for ch in engine.stream(req):
                    if ttft is None and ch.token_ids:
                        ttft = time.perf_counter() - t0
                    ids += ch.token_ids
                    text += ch.text
                    drafted += ch.drafted
                    accepted += ch.accepted
                return {"status": 200, "latency": time.perf_counter() - t0, "ttft": ttft,
                        "tokens": len(ids), "text": text, "ids": ids,
                        "speculative": {"draft_tokens": drafted, "accepted_tokens": accepted}}  # fmt: skip

        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(p) for p in texts))
        return list(res), time.perf_counter() - t0

    return asyncio.run(main())


def acceptance(results: list[dict]) -> float | None:
    d = sum((r.get("speculative") or {}).get("draft_tokens") or 0 for r in results)
    a = sum((r.get("speculative") or {}).get("accepted_tokens") or 0 for r in results)
    return a / d if d else None


def with_acceptance(arms):
    """Wrap wave functions so each row can report its acceptance rate (results kept per arm)."""
    kept: dict[str, list[dict]] = {}

    def wrap(name, fn):
        def run(texts, c):
            results, wall = fn(texts, c)
            kept.setdefault(name, []).extend(results)
            return results, wall

        return name, run

    return [wrap(n, f) for n, f in arms], kept


def run_level(arms, texts, c, rounds) -> list[dict]:
    """One concurrency level: the arms' rows, each with its acceptance rate and how many of its
    answers equal the teacher alone's (the arm named '... teacher alone' of the same kind)."""
    wrapped, kept = with_acceptance(arms)
    rows = run_ab(wrapped, texts, c, rounds)
    for r in rows:
        res = kept[r["name"]]
        r["acceptance"] = acceptance(res)
        kind = r["name"].split(" ")[0]  # bare | http
        alone = kept.get(f"{kind} {ALONE}", [])
        r["identical"], r["compared"], r["differs"] = identical(res, alone)
        r.pop("texts", None)
    return rows


def identical(results: list[dict], alone: list[dict]) -> tuple[int, int, list[str]]:
    """Answers (by prompt, every wave) equal to the teacher alone's: (equal, compared, first
    differing texts)."""
    want = {r["prompt"]: r["text"] for r in alone if r.get("status") == 200}
    equal, compared, differs = 0, 0, []
    for r in results:
        if r.get("status") != 200 or r["prompt"] not in want:
            continue
        compared += 1
        if r["text"] == want[r["prompt"]]:
            equal += 1
        elif len(differs) < 3:
            differs.append(
                f"{r['prompt'][:40]!r}: {r['text'][:60]!r} vs {want[r['prompt']][:60]!r}"
            )
    return equal, compared, differs


def tagged(fn):
    """A wave function whose results carry their prompt (for the identity check)."""

    def run(texts, c):
        results, wall = fn(texts, c)
        for p, r in zip(texts, results, strict=True):
            r["prompt"] = p
        return results, wall

    return run


# -- the Serve app ----------------------------------------------------------------------------------
def speculative_args(serve_config: str, draft: str, draft_engine: str, teacher: str, threads: int):
    """``deploy/serve.yaml``'s args with the student replaced by the draft and
    ``cascade.mode: speculative`` (draft_tokens auto)."""
    import yaml

    from distill.serve.config import ServeArgs

    raw = yaml.safe_load(Path(serve_config).read_text())
    args = raw["applications"][0]["args"]
    args["served_model_name"] = "bench"
    args["student"].update(model=draft, engine=draft_engine, torch_threads=threads)
    args["teacher"].update(model=teacher, torch_threads=threads)
    args["cascade"] = {"mode": "speculative", "speculative": {"draft_tokens": "auto"}}
    args["max_tokens_limit"] = max(args["max_tokens_limit"], 256)
    return ServeArgs.model_validate(args)


def http_arms(sa, max_tokens: int, ks: list[str]):
    """Start Ray + Serve with the speculative app; the HTTP arms and a stop function."""
    import ray
    from ray import serve
    from serve_load import direct_port

    from distill.serve.app import build_app
    from distill.serve.config import apply_serve_env

    apply_serve_env()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        proxy = s.getsockname()[1]
    t0 = time.perf_counter()
    serve.start(http_options={"host": "127.0.0.1", "port": proxy})
    serve.run(build_app(sa), name="bench", route_prefix="/")
    port = direct_port(proxy, "bench")
    print(f"serve.run {time.perf_counter() - t0:.1f} s (cascade.mode speculative), port {port}")

    def arm(model, distill=None):
        return tagged(lambda t, c: wave(port, model, t, c, max_tokens, distill))

    arms = [(f"http {ALONE}", arm("bench-teacher"))]
    for k in ks:
        arms.append((f"http speculative k={k}", arm("bench", {"draft_tokens": k})))

    def stop():
        serve.shutdown()
        ray.shutdown()

    return arms, port, stop


# -- the run --------------------------------------------------------------------------------------
def run_speculative(cli, teacher: str, texts_for, levels: list[int]) -> list[dict]:
    """The bare and HTTP arms at each level (``texts_for(c)`` gives the prompts). Used by this
    script's ``main`` and by ``serve_load.py --phases speculative``."""
    import torch

    from distill.serve.app import resolve_model
    from distill.serve.engines import DraftSpec
    from distill.serve.engines.draft import build_drafter
    from distill.serve.engines.hf import HFEngine

    ks = [k.strip() for k in cli.ks.split(",") if k.strip()]
    sa = speculative_args(cli.serve_config, cli.draft, cli.draft_engine, teacher, cli.threads)
    tpath, dpath = resolve_model(teacher)[0], resolve_model(cli.draft)[0]
    from distill.serve.app import speculative_draft

    speculative_draft(sa, {"teacher": tpath, "student": dpath})  # the tokenizer check
    rows: list[dict] = []
    if "bare" in cli.arms:
        torch.set_num_threads(cli.threads)
        spec = DraftSpec(cli.draft_engine, dpath)
        drafter = build_drafter(spec.engine, spec.path, threads=cli.threads)
        batching = sa.teacher.batching
        engine = HFEngine(tpath, torch_threads=cli.threads, batching=batching, draft=drafter)

        def arm(k):
            return tagged(lambda t, c: bare_wave(engine, t, c, cli.max_tokens, k))

        arms = [(f"bare {ALONE}", arm(None))] + [(f"bare speculative k={k}", arm(k)) for k in ks]
        bare_wave(engine, texts_for(1)[:2], 2, 8, "auto")  # warm up (both models)
        probe_costs(engine, drafter, levels)
        for c in levels:
            got = run_level(arms, texts_for(c), c, cli.rounds)
            print_rows(got)
            rows += got
        engine.close()
    if "http" in cli.arms:
        arms, _port, stop = http_arms(sa, cli.max_tokens, ks)
        try:
            for _name, fn in arms:
                fn(texts_for(1)[:2], 1)  # warm up
            for c in levels:
                got = run_level(arms, texts_for(c), c, cli.rounds)
                print_rows(got)
                rows += got
        finally:
            stop()
    return rows


def probe_costs(engine, drafter, levels: list[int], ks: tuple[int, ...] = (1, 2, 3, 5)) -> None:
    """Median wall time of the teacher's forward over T tokens per row (a decode step is T = 1,
    verifying k drafts T = k + 1) and of one drafted token per row, at each row count."""
    import statistics

    import torch

    from distill.serve.engines.base import SamplingParams
    from distill.serve.engines.draft import DraftRow
    from distill.serve.engines.kv import CachedLM

    lm = CachedLM(engine.model, engine.pad_id)
    print("costs (median of 3, ms):")
    for rows in levels:
        ctx = [[(100 + i + j) % engine.vocab for j in range(40)] for i in range(rows)]
        with torch.inference_mode():
            lm.reset()
            lm.prefill(ctx)
            line = []
            for t in ks:
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    lm.extend([[7] * t for _ in range(rows)])
                    times.append(time.perf_counter() - t0)
                    lm.discard([t] * rows)
                line.append(f"T={t} {1000 * statistics.median(times):.0f}")
        drafter.reset()
        drows = [DraftRow(i, c, SamplingParams()) for i, c in enumerate(ctx)]
        drafter.propose(drows, 1)  # prefill
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            drafter.propose(drows, 2)  # the second token costs one draft step per row
            t1 = time.perf_counter()
            drafter.propose(drows, 1)
            times.append((t1 - t0) - (time.perf_counter() - t1))
        drafter.reset()
        print(
            f"  {rows:>2} rows: teacher forward {', '.join(line)}; "
            f"one drafted token for all rows {1000 * statistics.median(times):.0f}"
        )
    lm.reset()


def fmt(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'arm':<30}{'conc':>5}{'req':>5}{'tok/s':>9}{'p50 s':>8}{'TTFT p50':>10}"
        f"{'accept':>8}{'same as teacher':>17}  errors"
    )
    for r in rows:
        print(
            f"{r['name']:<30}{r['concurrency']:>5}{r['requests']:>5}{r['tok_s']:>9.1f}"
            f"{fmt(r['p50_s']):>8}{fmt(r['ttft_p50_s']):>10}{fmt(r.get('acceptance')):>8}"
            f"{r['identical']:>11}/{r['compared']:<5}  {r['errors'] or 0}"
        )


def summary(rows: list[dict]) -> bool:
    """The issue's goals as ratios measured in this run; False if an answer differed."""
    ok = True
    print("\nspeculative decoding, goals (measured in this run):")
    for r in rows:
        if "speculative" not in r["name"]:
            continue
        kind = r["name"].split(" ")[0]
        alone = next(
            (
                x
                for x in rows
                if x["name"] == f"{kind} {ALONE}" and x["concurrency"] == r["concurrency"]
            ),
            None,
        )
        goal = 1.5 if r["concurrency"] == 1 else 1.2
        if alone and alone["tok_s"]:
            ratio = r["tok_s"] / alone["tok_s"]
            wins = sum(x > y for x, y in zip(r["rounds_tok_s"], alone["rounds_tok_s"], strict=True))
            print(
                f"  c={r['concurrency']:<3}{r['name']:<28} {r['tok_s']:6.1f} tok/s vs teacher "
                f"alone {alone['tok_s']:6.1f}: {ratio:.2f}x (goal >= {goal}x; ahead in {wins} of "
                f"{len(r['rounds_tok_s'])} waves), acceptance {fmt(r['acceptance'])}"
            )
        same = r["identical"] == r["compared"] and r["compared"] > 0
        ok = ok and same
        print(
            f"       answers identical to the teacher alone's: {r['identical']} of "
            f"{r['compared']}{'' if same else '  DIFFER: ' + '; '.join(r['differs'])}"
        )
    return ok


def main() -> int:
    from serve_load import prompts

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draft", help="the student as draft: an int4 ORT export or an HF dir")
    ap.add_argument(
        "--draft-engine", default="onnxruntime-genai", choices=["hf", "onnxruntime-genai"]
    )
    ap.add_argument("--teacher", default="gguf:default")
    ap.add_argument("--tiny", action="store_true", help="tiny random teacher and draft (hf)")
    ap.add_argument("--serve-config", default=str(REPO / "deploy" / "serve-speculative.yaml"))
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--min-requests", type=int, default=8, help="requests per level (>= conc)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ks", default="auto,4", help="draft lengths of the speculative arms")
    ap.add_argument("--rounds", type=int, default=2, help="waves per arm and level")
    ap.add_argument("--arms", default="bare,http", help="bare, http or both")
    ap.add_argument("--json", help="write the rows here")
    cli = ap.parse_args()
    teacher = cli.teacher
    if cli.tiny:
        import tempfile

        from distill.models.config import TinySource
        from distill.models.loader import resolve_source

        cache = Path(tempfile.gettempdir()) / "distill-bench-serve"
        teacher = str(resolve_source(TinySource(num_hidden_layers=4, hidden_size=128), cache).path)
        small = TinySource(num_hidden_layers=2, hidden_size=128, seed=1)
        cli.draft, cli.draft_engine = str(resolve_source(small, cache).path), "hf"
    if not cli.draft:
        sys.exit("give --draft DIR (e.g. runs/smollm2/student-int4-cpu) or --tiny")
    levels = [int(x) for x in cli.concurrency.split(",")]
    texts = prompts(max(max(levels), cli.min_requests))
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {describe()}; {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"teacher {teacher} (hf); draft {cli.draft} ({cli.draft_engine}); "
          f"{cli.max_tokens} tokens/answer, greedy")  # fmt: skip
    rows = run_speculative(cli, teacher, lambda c: texts[: max(c, cli.min_requests)], levels)
    print()
    print_rows(rows)
    ok = summary(rows)
    if cli.json:
        Path(cli.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
