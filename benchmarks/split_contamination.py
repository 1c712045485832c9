"""Held-out/train 13-gram overlap of the demo corpus split: distill's split vs the previous one.

    .venv/bin/python benchmarks/split_contamination.py            # smollm2.yaml's corpus

distill: ``prepare_corpus`` as ``distill run pipelines/configs/smollm2.yaml`` runs it
(near-duplicate clusters kept on one side, seeded document order). Peer: the split distill had
before (documents hashed by absolute path, packed in path order, no clustering), on the same
documents and tokenizer. Both measured the way the ``evaluate`` stage does (the first 2,048
held-out rows against the first 2,048 train rows, token 13-grams), with the config's row caps and
with all rows. Goal: ≤ 5% (the default ``evaluate.contamination.threshold``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from distill.machine import describe

DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "smollm2.yaml"
MAX_ROWS = 2048  # what ContaminationConfig.max_rows reads per set


def rate(held, train) -> tuple[float, int, int]:
    from distill.eval.contamination import check_contamination

    p = check_contamination({"h": held[:MAX_ROWS]}, {"t": train[:MAX_ROWS]}, 13, 1.0).pairs[0]
    return p.rate, len(held), len(train)


def previous_split(cfg, tok) -> dict[str, tuple]:
    """The split distill had before: absolute-path hash, path order, every document alone."""
    from distill.data.corpus import is_heldout, resolve_files
    from distill.data.packing import pack

    files = sorted(str(f) for f in resolve_files(cfg.corpus))
    docs = {}
    for f in files:
        text = Path(f).read_text(encoding="utf-8", errors="replace")[: cfg.corpus.max_doc_chars]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if ids:
            docs[f] = ids
    held = [d for d in docs if is_heldout(d, cfg.heldout_fraction, cfg.seed)]
    train = [d for d in docs if d not in set(held)]
    out = {}
    for name, caps in (
        ("row caps", (cfg.max_train_rows, cfg.max_heldout_rows)),
        ("all rows", (None, None)),
    ):
        t = pack((docs[d] for d in train), cfg.seq_len, tok.eos_token_id, caps[0])
        h = pack((docs[d] for d in held), cfg.seq_len, tok.eos_token_id, caps[1])
        out[name] = rate(h, t)
    return out


def distill_split(cfg, tok_dir: Path, work: Path) -> dict[str, tuple]:
    from distill.data.pipeline import prepare_corpus

    out = {}
    for name, over in (
        ("row caps", {}),
        ("all rows", {"max_train_rows": None, "max_heldout_rows": None}),
    ):
        c = prepare_corpus(cfg.model_copy(update=over), tok_dir, work / name.replace(" ", "-"))
        out[name] = rate(c.heldout(MAX_ROWS), c.train(MAX_ROWS))
        meta = json.loads((c.root / "meta.json").read_text())
        out[name] += (
            meta["heldout_documents"],
            meta["near_duplicate_clusters"],
            meta["largest_cluster"],
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=DEMO)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import ray

    from distill.models.loader import load_tokenizer, resolve_source
    from distill.pipeline import load_config

    cfg = load_config(args.config, [])
    tok_dir = resolve_source(cfg.teacher).path
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    work = args.workdir or Path(tempfile.mkdtemp(prefix="split-contamination-"))
    t0 = time.perf_counter()
    ours = distill_split(cfg.data, tok_dir, work)
    before = previous_split(cfg.data, load_tokenizer(tok_dir))
    print()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {describe()}; date {datetime.now():%Y-%m-%d %H:%M}; {time.perf_counter() - t0:.0f} s"
    )
    print(
        f"corpus: {args.config.name} data section (seq_len {cfg.data.seq_len}, held-out fraction {cfg.data.heldout_fraction})"
    )
    print()
    print("| split | rows | held-out 13-grams found in train | held-out rows | train rows read |")
    print("|---|---|---|---|---|")
    for name in ("row caps", "all rows"):
        r, h, t = before[name]
        print(
            f"| previous (absolute-path hash, path order) | {name} | {r:.1%} | {h} | {min(t, MAX_ROWS)} |"
        )
        r, h, t, docs, clusters, big = ours[name]
        print(
            f"| distill (near-duplicate clusters, seeded order) | {name} | {r:.1%} | {h} ({docs} documents) | {min(t, MAX_ROWS)} |"
        )
    print(
        f"\nnear-duplicate clusters: {ours['all rows'][4]}, largest {ours['all rows'][5]} documents"
    )
    worst = max(ours[n][0] for n in ours)
    print(f"goal ≤ 5%: {'met' if worst <= 0.05 else 'MISSED'} ({worst:.1%})")


if __name__ == "__main__":
    main()
