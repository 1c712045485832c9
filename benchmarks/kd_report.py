"""Table and goal lines of ``benchmarks/kd_vs_trl.py`` (final students scored in one pass)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

GIB = 1024**3


def _store_line(prep: Path, name: str) -> tuple[str, dict[str, Any]]:
    from distill.labels.manifest import read_manifest

    m = read_manifest(prep / name)
    f = m.fidelity
    assert f is not None
    kl = f"KL(full‖top-k) {f.kl:.3f}, " if f.kl is not None else ""
    return (
        f"  {name:8} {m.bytes_per_token:6.1f} B/token, captured mass {f.captured_mass:.3f}, {kl}"
        f"target TV {f.target_tv:.3f}, fwd-KL gradient rel. error {f.grad_rel_err:.3f} "
        f"({f.positions} positions)",
        {"bytes_per_token": m.bytes_per_token, **f.model_dump()},
    )


def report(
    results: dict[str, dict[str, Any]],
    prep: Path,
    o: dict[str, Any],
    header: dict[str, Any],
    wd: Path,
    time_to: Callable[[list[dict[str, float]], float], float | None],
) -> None:
    from distill.data.packed import read_rows
    from distill.eval.metrics import evaluate_models
    from distill.models.loader import load_causal_lm

    info = json.loads((prep / "done.json").read_text())
    held = read_rows(prep / "heldout.parquet")
    dirs = {"teacher": Path(info["teacher"]), "pruned (start)": prep / "pruned"}
    dirs.update({m: Path(r["student"]) for m, r in results.items()})
    q = evaluate_models({k: load_causal_lm(p) for k, p in dirs.items()}, held, 4, "teacher")
    lines = {s: _store_line(prep, s) for s in ("topk", "sampled")}
    store_info = {s: v[1] for s, v in lines.items()}
    store_bpt = {s: v["bytes_per_token"] for s, v in store_info.items()}
    gkd = results.get("trl_gkd")
    target = gkd["curve"][-1]["ppl"] if gkd else None
    print()
    for key in ("command", "machine", "date"):
        print(f"{key}: {header[key]}")
    print(
        f"budget: {o['steps']} steps x {o['batch_size']} rows x {o['seq_len']} tokens = "
        f"{o['steps'] * o['batch_size'] * o['seq_len']} training tokens/method, lr {o['lr']}, "
        f"warmup {o['warmup']}, cosine to 0; held-out {held.shape[0]}x{held.shape[1]} tokens"
    )
    print(
        f"soft-label stores: one teacher pass, {info['store_seconds']:.0f} s "
        f"({info['store_tokens_per_s']:.0f} tok/s incl. encoding), not in any method's time"
    )
    for line, _ in lines.values():
        print(line)
    cols = (
        f"{'model':24} {'tok/s':>6} {'train s':>7} {'proc s':>6} {'RSS GiB':>11} {'B/tok':>6} "
        f"{'ppl':>7} {'acc':>6} {'agree':>6} {'t→GKD ppl':>9} {'×GKD t':>6} {'load':>4}"
    )
    print(cols)
    print("-" * len(cols))
    rows = []
    for name, qm in q.items():
        r = results.get(name, {})
        tt = time_to(r["curve"], target) if r and target else None
        ratio = tt / gkd["train_seconds"] if tt is not None and gkd else None
        bpt = store_bpt.get(r.get("store", "")) if r else None
        row = {"model": name, **qm, **{k: v for k, v in r.items() if k != "curve"}}
        row.update(time_to_gkd_ppl=tt, time_ratio_vs_gkd=ratio, store_bytes_per_token=bpt)
        rows.append(row)
        rss = (
            f"{r['peak_rss'] / GIB:5.2f}/{r['peak_rss_largest'] / GIB:4.2f}" if r else f"{'-':>11}"
        )
        print(
            f"{name:24} {_f(r.get('tokens_per_s'), 6, 0)} {_f(r.get('train_seconds'), 7, 0)} "
            f"{_f(r.get('process_seconds'), 6, 0)} {rss:>11} {_f(bpt, 6, 1)} "
            f"{qm['perplexity']:7.2f} {qm['next_token_accuracy']:6.3f} "
            f"{qm.get('agreement', 1.0):6.3f} {_f(tt, 9, 0)} {_f(ratio, 6, 2)} "
            f"{_f(r.get('load_avg'), 4, 1)}"
        )
    print("RSS: peak Σ over the method's process tree / its largest process (distill: + Ray)")
    _goals(results, q, store_bpt, gkd, target, time_to)
    out = {"header": header, "opts": o, "stores": store_info, "rows": rows}
    out["curves"] = {m: r["curve"] for m, r in results.items()}
    (wd / "result.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"total wall time {header['total_seconds']:.0f} s; details in {wd / 'result.json'}")


def _f(v: float | None, width: int, digits: int) -> str:
    return f"{v:{width}.{digits}f}" if v is not None else f"{'-':>{width}}"


def _goals(results, q, store_bpt, gkd, target, time_to) -> None:
    if not gkd:
        return
    g = q["trl_gkd"]
    for name in ("distill_sampled", "distill_topk", "distill_online"):
        if name not in results:
            continue
        r, m = results[name], q[name]
        better = (
            m["perplexity"] <= g["perplexity"]
            and m["next_token_accuracy"] >= g["next_token_accuracy"]
            and m["agreement"] >= g["agreement"]
        )
        tt = time_to(r["curve"], target)
        speed = r["tokens_per_s"] / gkd["tokens_per_s"]
        t_ratio = f"{tt / gkd['train_seconds']:.2f}x" if tt is not None else "never reached"
        print(
            f"goal {name}: as good as TRL GKD on ppl/acc/agree: {'MET' if better else 'MISSED'}; "
            f"time to GKD's final ppl {t_ratio} of GKD's train time (goal <= 0.5x); "
            f"train tok/s {speed:.2f}x GKD (goal >= 2x); peak RSS {r['peak_rss'] / GIB:.2f} vs "
            f"{gkd['peak_rss'] / GIB:.2f} GiB (goal <=)"
        )
    if "distill_sampled" in q and "distill_online" in q:
        gap = q["distill_sampled"]["perplexity"] / q["distill_online"]["perplexity"] - 1
        print(
            f"goal sampled store: {store_bpt['sampled']:.1f} B/token (goal <= 40), ppl "
            f"{gap * 100:+.1f}% vs online full logits (goal within 2%)"
            + (
                f", top-k 32 at {store_bpt['topk']:.1f} B/token: "
                f"{(q['distill_topk']['perplexity'] / q['distill_online']['perplexity'] - 1) * 100:+.1f}%"
                if "distill_topk" in q
                else ""
            )
        )
