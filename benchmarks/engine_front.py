"""Served int4 models side by side, in one process: held-out and `rich` perplexity, and batch-1 /
batch-8 decode with the models' runs interleaved (``evaluate``'s ``serving_speeds``), each as a
ratio to the first model. Made to ask whether a student beats the teacher quantized in the
student's own engine format, not only ``teacher_int4``'s (the GGUF's Q4_1 grid)::

    .venv/bin/python benchmarks/engine_front.py --run runs/smollm2 \\
        --model teacher_int4=runs/smollm2/teacher-int4-cpu \\
        --model teacher_gptq=runs/smollm2/teacher-int4-gptq-cpu \\
        --model int4_cpu=runs/smollm2/student-int4-cpu

(``teacher-int4-gptq-cpu``: the run's teacher GPTQ checkpoint with the student's engine settings,
made by the ``teacher_int4`` stage and scored by ``evaluate`` as ``teacher_int4_gptq_cpu``; for a
run from before that, ``benchmarks/int4_engines.py --run runs/smollm2 --models teacher
--variants "ort gptq, int8 tied" --workdir /tmp/engines`` makes it). This script adds more
repeats and any other served directory (students of other runs) to the same timing. Rows: the
run's held-out split and 32 rows of the `rich` package's sources, read like
``evaluate.extra_corpora``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.machine import describe


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run's workdir")
    ap.add_argument("--model", action="append", required=True, help="name=served model dir")
    ap.add_argument("--heldout-rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, default=2, help="every engine's (a manifest may lack it)"
    )
    args = ap.parse_args(argv)

    from distill.artifacts import load_for_eval
    from distill.data.packed import read_rows
    from distill.eval.config import ExtraCorpus, SpeedConfig
    from distill.eval.extra import extra_corpus_rows
    from distill.eval.metrics import evaluate_models
    from distill.eval.speed import serving_speeds, speed_prompts
    from distill.models.loader import load_tokenizer

    named = dict(m.split("=", 1) for m in args.model)
    models = {k: load_for_eval(Path(v), threads=args.threads) for k, v in named.items()}
    held = read_rows(args.run / "data" / "heldout.parquet", args.heldout_rows)
    tok = load_tokenizer(args.run / "student")  # the teacher's tokenizer, kept by every stage
    rich = extra_corpus_rows(0, ExtraCorpus(name="rich", package="rich"), tok, held.shape[1])
    quality = {"held-out": evaluate_models(models, held), "rich": evaluate_models(models, rich)}
    cfg = SpeedConfig(prompt_tokens=128, new_tokens=64, batch_sizes=[1, 8], repeats=args.repeats)
    speed = serving_speeds(models, speed_prompts(held, cfg), cfg)

    first = next(iter(models))

    def cell(name: str, value: float, ref: float) -> str:
        return f"{value:.2f} ({value / ref:.2f}×)" if name != first else f"{value:.2f}"

    print(f"\n$ {' '.join([Path(sys.executable).name, *sys.argv])}\n{describe()}")
    print(
        f"held-out {len(held)} rows, rich {len(rich)} rows x {held.shape[1]} tokens; decode 64 "
        f"greedy tokens after 128, median of {args.repeats}, runs interleaved, {args.threads} "
        f"threads each; (x) = / {first}\n"
    )
    print(
        "| model | held-out ppl | rich ppl | decode b1 tok/s | decode b8 tok/s |\n|---|---|---|---|---|"
    )
    for k in models:
        q = [quality[c][k]["perplexity"] for c in ("held-out", "rich")]
        q0 = [quality[c][first]["perplexity"] for c in ("held-out", "rich")]
        s = [speed[k].get(f"decode_b{b}_tps", float("nan")) for b in (1, 8)]
        s0 = [speed[first].get(f"decode_b{b}_tps", float("nan")) for b in (1, 8)]
        cells = [cell(k, v, r) for v, r in zip(q + s, q0 + s0, strict=True)]
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
