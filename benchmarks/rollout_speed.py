"""What an on-policy step's sampling costs: distill's rollout sampler against HF ``generate``.

    .venv/bin/python benchmarks/rollout_speed.py --student runs/smollm2/pruned \\
        --rows runs/smollm2/data/train.parquet [--batch-sizes 1,4,8] [--threads 2]

Both sample ``--new-tokens`` tokens at T=1 from the full softmax (as GKD does) after prompts of
``--prompt-tokens`` cut from packed rows, with the model's KV cache; the arms alternate and the
median of ``--repeats`` is printed, with sampled tokens/s and the ratio. Never stops early (no
stop tokens), so both do the same work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from distill.machine import describe


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--rows", type=Path, required=True)
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from distill.data.packed import read_rows
    from distill.models.loader import load_causal_lm
    from distill.train.rollout import sample, step_generator

    torch.set_num_threads(args.threads)
    model = load_causal_lm(args.student).eval()
    rows = read_rows(args.rows)
    print(f"command: {Path(sys.executable).name} {' '.join(sys.argv)}")
    print(f"machine: {describe()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        f"{'batch':>5} {'distill s':>9} {'tok/s':>7} {'generate s':>10} {'tok/s':>7} {'ratio':>6}"
    )
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        prompts = torch.as_tensor(rows[:b, : args.prompt_tokens], dtype=torch.long)
        times: dict[str, list[float]] = {"distill": [], "generate": []}
        for r in range(args.repeats + 1):  # the first round warms up
            t0 = time.perf_counter()
            sample(model, prompts, args.new_tokens, 1.0, [], 0, step_generator(0, r, 0, 0))
            t1 = time.perf_counter()
            with torch.no_grad():
                model.generate(
                    prompts,
                    attention_mask=torch.ones_like(prompts),
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    pad_token_id=0,
                )
            t2 = time.perf_counter()
            if r:
                times["distill"].append(t1 - t0)
                times["generate"].append(t2 - t1)
        d, g = statistics.median(times["distill"]), statistics.median(times["generate"])
        n = b * args.new_tokens
        print(f"{b:5d} {d:9.2f} {n / d:7.1f} {g:10.2f} {n / g:7.1f} {g / d:6.2f}")


if __name__ == "__main__":
    main()
