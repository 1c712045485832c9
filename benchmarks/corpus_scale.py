"""Corpus preparation at 1x and 10x the demo corpus: driver peak RSS and wall time, distill's
Ray Data pipeline vs the driver-side peer (what distill did before: tokenize on Ray Data,
``take_all()`` every document into the driver, split and pack there).

    .venv/bin/python benchmarks/corpus_scale.py                  # scales 1,10
    .venv/bin/python benchmarks/corpus_scale.py --scales 1,4 --impls distill

The demo corpus is the 400 stdlib documents of ``pipelines/configs/smollm2.yaml``; scale k writes
k copies of it to a text folder (copy j of a file gets a one-line header, so ids and contents
differ: near-duplicates the split keeps together). Each (implementation, scale) runs in a fresh
process with its own local Ray (2 CPUs); peak RSS is the driver's ``ru_maxrss``. Every row is
packed (no ``max_train_rows``), with the real teacher's tokenizer and seq_len 256.
Goal: distill's driver peak RSS flat (±20%) from 1x to 10x.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from distill.machine import describe

DEMO_DOCS = 400
SEQ_LEN = 256


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_corpus(root: Path, scale: int) -> Path:
    """``root/x<scale>``: ``scale`` copies of the demo's stdlib documents."""
    from distill.data.config import CorpusConfig
    from distill.data.corpus import resolve_files, stdlib_root

    out = root / f"x{scale}"
    if (out / ".done").exists():
        return out
    files = resolve_files(CorpusConfig(kind="stdlib", max_documents=DEMO_DOCS))
    for j in range(scale):
        for f in files:
            dest = out / f"copy{j:02d}" / f.relative_to(stdlib_root())
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(f"# copy {j}\n" + f.read_text(encoding="utf-8", errors="replace"))
    (out / ".done").touch()
    return out


def run_distill(corpus: Path, tok: Path, out: Path) -> dict:
    from distill.data.config import CorpusConfig, DataConfig
    from distill.data.pipeline import prepare_corpus

    cfg = DataConfig(
        corpus=CorpusConfig(kind="files", paths=[corpus], glob="**/*.py"),
        seq_len=SEQ_LEN,
        heldout_fraction=0.1,
    )
    c = prepare_corpus(cfg, tok, out)
    return {"train_rows": c.train_rows, "heldout_rows": c.heldout_rows}


class _Tok:
    """The peer's tokenizer actor (one, as distill had it)."""

    def __init__(self, tok: str) -> None:
        from distill.models.loader import load_tokenizer

        self.tok = load_tokenizer(Path(tok))

    def __call__(self, batch):
        import numpy as np

        ids = self.tok([str(t) for t in batch["text"]], add_special_tokens=False)["input_ids"]
        return {"doc_id": batch["doc_id"], "input_ids": [np.asarray(x, np.int32) for x in ids]}


def run_peer(corpus: Path, tok: Path, out: Path) -> dict:
    """The landed main's corpus stage: every document's tokens gathered at the driver."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from distill.data.corpus import is_heldout
    from distill.data.packed import write_rows
    from distill.data.packing import pack
    from distill.models.loader import load_tokenizer

    files = sorted(str(f) for f in corpus.rglob("*.py"))
    ds = ray.data.read_binary_files(files, include_paths=True).map(
        lambda r: {"doc_id": r["path"], "text": r["bytes"].decode("utf-8", errors="replace")}
    )
    ds = ds.map_batches(
        _Tok,
        fn_constructor_args=(str(tok),),
        batch_size=16,
        compute=ActorPoolStrategy(size=1),
        num_cpus=0.5,
    )
    docs = sorted(ds.take_all(), key=lambda r: r["doc_id"])
    held = [d for d in docs if is_heldout(d["doc_id"], 0.1, 0)]
    train = [d for d in docs if not is_heldout(d["doc_id"], 0.1, 0)]
    eos = load_tokenizer(tok).eos_token_id
    t = pack((d["input_ids"] for d in train), SEQ_LEN, eos)
    h = pack((d["input_ids"] for d in held), SEQ_LEN, eos)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "train.parquet", t)
    write_rows(out / "heldout.parquet", h)
    return {"train_rows": len(t), "heldout_rows": len(h)}


def child(impl: str, corpus: Path, tok: Path, out: Path) -> None:
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    for h in logging.getLogger("ray.data").handlers:
        h.setLevel(logging.WARNING)
    base = rss_mb()
    t0 = time.perf_counter()
    res = (run_distill if impl == "distill" else run_peer)(corpus, tok, out)
    res.update(seconds=time.perf_counter() - t0, base_rss_mb=base, peak_rss_mb=rss_mb())
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="1,10")
    ap.add_argument("--impls", default="distill,peer")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/corpus_scale"))
    ap.add_argument("--child", nargs=4, metavar=("IMPL", "CORPUS", "TOK", "OUT"))
    args = ap.parse_args()
    if args.child:
        impl, corpus, tok, out = args.child
        child(impl, Path(corpus), Path(tok), Path(out))
        return

    from distill.models.config import GGUFSource
    from distill.models.loader import resolve_source

    tok = resolve_source(GGUFSource()).path
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for scale in [int(s) for s in args.scales.split(",")]:
        corpus = build_corpus(args.workdir / "corpora", scale)
        for impl in args.impls.split(","):
            out = args.workdir / "out" / f"{impl}-x{scale}"
            cmd = [sys.executable, __file__, "--child", impl, str(corpus), str(tok), str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stdout[-2000:], proc.stderr[-4000:])
                raise SystemExit(f"{impl} x{scale} failed")
            r = json.loads(line[0][7:])
            results.append((impl, scale, r))
            print(f"  {impl} x{scale}: {r}", flush=True)

    print()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {describe()}; date {datetime.now():%Y-%m-%d %H:%M}")
    print(f"corpus: {DEMO_DOCS} stdlib documents x scale, seq_len {SEQ_LEN}, all rows packed")
    print()
    print(
        "| implementation | scale | train rows | held-out rows | wall s | driver RSS after ray.init MB | driver peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for impl, scale, r in results:
        print(
            f"| {impl} | {scale}x | {r['train_rows']:,} | {r['heldout_rows']:,} | "
            f"{r['seconds']:.0f} | {r['base_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    by = {(i, s): r for i, s, r in results}
    scales = sorted({s for _, s, _ in results})
    if len(scales) >= 2:
        lo, hi = scales[0], scales[-1]
        for impl in dict.fromkeys(i for i, _, _ in results):
            if (impl, lo) in by and (impl, hi) in by:
                ratio = by[(impl, hi)]["peak_rss_mb"] / by[(impl, lo)]["peak_rss_mb"]
                verdict = "flat (goal ±20%: met)" if abs(ratio - 1) <= 0.2 else "goal ±20%: MISSED"
                print(
                    f"{impl}: peak RSS {hi}x / {lo}x = {ratio:.2f} — {verdict if impl == 'distill' else ''}"
                )


if __name__ == "__main__":
    main()
