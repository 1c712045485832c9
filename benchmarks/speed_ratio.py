"""How stable is the gate's speed ratio (a candidate's batch-1 decode over ``teacher_int4``'s)?
``evaluate``'s interleaved timing (``serving_speeds``) against the same models timed one after
the other (``serving_speed`` per model, the previous method), in the same process::

    .venv/bin/python benchmarks/speed_ratio.py --run runs/smollm2 [--trials 6] [--repeats 3]

Each trial measures the ratio both ways, the two methods alternating; the table gives each
method's ratios over the trials and their spread (max / min). Run it beside other work to see
what a shared box does to each: the interleaved ratio should hold where the sequential one moves.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from distill.machine import describe


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run's workdir")
    ap.add_argument("--baseline", default="teacher-int4-cpu")
    ap.add_argument("--candidate", default="student-int4-cpu")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from distill.artifacts import load_for_eval
    from distill.data.packed import read_rows
    from distill.eval.config import SpeedConfig
    from distill.eval.speed import serving_speed, serving_speeds, speed_prompts

    cfg = SpeedConfig(prompt_tokens=128, new_tokens=64, batch_sizes=[1], repeats=args.repeats)
    prompts = speed_prompts(read_rows(args.run / "data" / "heldout.parquet"), cfg)
    models = {k: load_for_eval(args.run / k) for k in (args.baseline, args.candidate)}
    b, c = args.baseline, args.candidate
    ratios: dict[str, list[float]] = {"sequential": [], "interleaved": []}
    for t in range(args.trials):
        seq = {k: serving_speed(m, prompts, cfg)["decode_b1_tps"] for k, m in models.items()}
        inter = {k: v["decode_b1_tps"] for k, v in serving_speeds(models, prompts, cfg).items()}
        ratios["sequential"].append(seq[c] / seq[b])
        ratios["interleaved"].append(inter[c] / inter[b])
        print(
            f"trial {t}: sequential {seq[c]:.1f}/{seq[b]:.1f}, interleaved {inter[c]:.1f}/{inter[b]:.1f}"
        )

    print(f"\n{' '.join(sys.argv)}\n{describe()}")
    print(f"decode b1 tok/s ratio {c} / {b}, {args.trials} trials of {args.repeats} repeats\n")
    print("| method | ratios | median | spread (max / min) |\n|---|---|---|---|")
    for name, r in ratios.items():
        cells = ", ".join(f"{x:.2f}" for x in r)
        print(f"| {name} | {cells} | {statistics.median(r):.2f} | {max(r) / min(r):.3f} |")


if __name__ == "__main__":
    main()
