"""Sequence-level KD benchmark: teacher generation throughput, what each filter keeps, and the
student's held-out results after SFT on the filtered vs the unfiltered set (same steps).

    .venv/bin/python benchmarks/seq_kd.py                       # SmolLM2 teacher, small defaults
    .venv/bin/python benchmarks/seq_kd.py --prompts 64 --max-new-tokens 192 --steps 60
    .venv/bin/python benchmarks/seq_kd.py --teacher tiny         # mechanics only, seconds

The student is the teacher with every other decoder layer removed (a crude depth cut, so SFT has
something to recover). The SFT comparison trains in this process (``train_single_process``), not
through the pipeline's Ray Train + DeepSpeed trainer: it measures what the filters change at equal
steps, not the trainer. Generation runs in-process (``LocalGenerator``, the class the generate
stage puts on its Ray actor pool). Held-out results: completion loss on held-out prompts' teacher
answers (filtered), and perplexity on held-out stdlib rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from distill.machine import describe


def _teacher(kind: str):
    from distill.models.config import GGUFSource, TinySource
    from distill.models.loader import resolve_source

    return resolve_source(GGUFSource() if kind == "gguf" else TinySource())


def _cut_layers(model):
    """Keep layers 0, 2, 4, …: renumber ``layer_idx`` and update the config."""
    import torch

    keep = list(range(0, model.config.num_hidden_layers, 2))
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in keep])
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return model


def _ppl(model, rows: np.ndarray, batch: int = 4) -> float:
    import torch

    losses = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            x = torch.as_tensor(rows[i : i + batch], dtype=torch.long)
            losses.append(float(model(input_ids=x, labels=x).loss))
    return float(np.exp(np.mean(losses)))


def train_single_process(model, rows: dict[str, np.ndarray], cfg) -> list[float]:
    """``cfg.steps`` AdamW steps in this process over shuffled SFT rows (labels pre-masked).

    Benchmark only: it compares SFT on the filtered vs the unfiltered set at equal steps. The
    pipeline's ``sft`` stage trains through Ray Train + DeepSpeed instead (``distill.train``).
    """
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1))
    )
    n = len(rows["input_ids"])
    order, pos, losses = rng.permutation(n), 0, []
    for _ in range(cfg.steps):
        if pos >= n:
            order, pos = rng.permutation(n), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        batch = {k: torch.as_tensor(v[idx], dtype=torch.long) for k, v in rows.items()}
        loss = model(**batch).loss  # HF shifts labels and ignores -100
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss))
    model.eval()
    return losses


def _heldout_rows(tok, seq_len: int, n: int) -> np.ndarray:
    from distill.data.corpus import is_heldout, stdlib_files
    from distill.data.packing import pack

    files = [f for f in stdlib_files() if is_heldout(str(f), 0.1, 0)][:20]
    docs = [
        tok(f.read_text(errors="replace"), add_special_tokens=False)["input_ids"] for f in files
    ]
    return pack(docs, seq_len, tok.eos_token_id, n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", choices=["gguf", "tiny"], default="gguf")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--n", type=int, default=1, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--eval-rows", type=int, default=8)
    args = ap.parse_args(argv)

    import torch

    from distill.data.corpus import stdlib_files
    from distill.data.filters import FiltersConfig, apply_filters
    from distill.models.loader import load_causal_lm, load_tokenizer
    from distill.seqkd.completion_loss import completion_loss
    from distill.seqkd.config import DecodingConfig, PromptsConfig, SFTConfig
    from distill.seqkd.generate_stage import _items
    from distill.seqkd.prompts import load_prompts
    from distill.seqkd.sft_data import build_rows, encode_example
    from distill.seqkd.teachers import LocalGenerator

    torch.set_num_threads(os.cpu_count() or 1)
    info = _teacher(args.teacher)
    tok = load_tokenizer(info.path)
    pcfg = PromptsConfig(max_prompts=args.prompts, heldout_fraction=0.25, max_files=300)
    prompts, _ = load_prompts(pcfg, stdlib_files(), None)
    dec = DecodingConfig(
        n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens
    ).model_dump()

    # 1. generation throughput
    t0 = time.perf_counter()
    gen = LocalGenerator(str(info.path), dec, True, os.cpu_count(), "float32")
    load_s = time.perf_counter() - t0
    items = _items(prompts)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for i in range(0, len(items), args.batch_size):
        chunk = items[i : i + args.batch_size]
        out = gen({k: [r[k] for r in chunk] for k in chunk[0]})
        rows.extend({k: out[k][j] for k in out} for j in range(len(out["key"])))
    gen_s = time.perf_counter() - t0
    for r in rows:
        r["mean_logprob"] = None if r["mean_logprob"] != r["mean_logprob"] else r["mean_logprob"]
    tokens = sum(r["n_tokens"] for r in rows)
    del gen

    # 2. filters: share kept by each alone, and in sequence
    fcfg = FiltersConfig.model_validate(
        {"length": {"min": 8}, "logprob": {"min_mean_logprob": -2.5}}
    )
    train = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "heldout"]
    _, seq_reports = apply_filters(train, fcfg)
    alone = {}
    for name in ("quality", "length", "repetition", "syntax", "logprob", "dedup"):
        only = fcfg.model_copy(
            update={
                k: getattr(fcfg, k).model_copy(update={"enabled": k == name})
                for k in FiltersConfig.model_fields
            }
        )
        alone[name] = apply_filters(train, only)[1][0]
    kept, _ = apply_filters(train, fcfg)
    held_kept, _ = apply_filters(held, fcfg)
    held_eval = held_kept or held

    # 3. SFT on kept vs all, same steps, same student start
    def examples(rs):
        return [encode_example(tok, r, True) for r in rs]

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    held_rows, _ = build_rows(examples(held_eval[: args.eval_rows]), args.seq_len, pad, False)
    ppl_rows = _heldout_rows(tok, args.seq_len, args.eval_rows)
    scfg = SFTConfig(steps=args.steps, batch_size=4, lr=args.lr, warmup_steps=0)
    results = {}
    base = _cut_layers(load_causal_lm(info.path))
    results["student before SFT"] = (0, completion_loss(base, held_rows), _ppl(base, ppl_rows), 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        for label, subset in (("SFT on kept", kept), ("SFT on all (unfiltered)", train)):
            if not subset:
                results[label] = (0, float("nan"), float("nan"), 0.0)
                continue
            data, _ = build_rows(examples(subset), args.seq_len, pad, True)
            model = load_causal_lm(Path(tmp))
            t0 = time.perf_counter()
            train_single_process(model, data, scfg)
            took = time.perf_counter() - t0
            results[label] = (
                len(subset),
                completion_loss(model, held_rows),
                _ppl(model, ppl_rows),
                took,
            )
    teacher = load_causal_lm(info.path)
    results["teacher"] = (0, completion_loss(teacher, held_rows), _ppl(teacher, ppl_rows), 0.0)

    print(f"\n$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {describe()}")
    print(
        f"teacher: {info.name}  prompts {len(prompts)} (train {len(train) // args.n}, "
        f"held-out {len(held) // args.n})  n={args.n}  max_new_tokens={args.max_new_tokens}"
    )
    print("\n| generation | value |\n|---|---|")
    print(f"| model load s | {load_s:.1f} |")
    print(
        f"| completions | {len(rows)} ({tokens} tokens, "
        f"{sum(r['finish_reason'] == 'length' for r in rows)} truncated) |"
    )
    print(f"| completions/s | {len(rows) / gen_s:.2f} |")
    print(f"| tokens/s | {tokens / gen_s:.1f} |")
    print("\n| filter (train split) | kept alone | kept in sequence (in → kept) |\n|---|---|---|")
    seq = {r.name: r for r in seq_reports}
    for name, rep in alone.items():
        s = seq[name]
        print(
            f"| {name} | {rep.kept}/{rep.n_in} ({rep.kept / max(rep.n_in, 1):.0%}) "
            f"| {s.n_in} → {s.kept} |"
        )
    print(f"| **all** | | {len(train)} → {len(kept)} ({len(kept) / max(len(train), 1):.0%}) |")
    print(
        f"\n| model ({args.steps} single-process SFT steps, batch 4, seq {args.seq_len}) | train examples "
        f"| held-out completion loss | held-out stdlib ppl | train s |\n|---|---|---|---|---|"
    )
    for label, (n, cl, ppl, took) in results.items():
        print(f"| {label} | {n or '—'} | {cl:.3f} | {ppl:.2f} | {took:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
