"""Table and goal lines of ``benchmarks/kd_vs_trl.py`` (final students scored in one pass).

The demo suites add the extra corpus and the sequence-level columns (:func:`sequence_level`):
greedy 32-token answers replayed by ``distill calibrate``'s code on 64 prompts cut from the
held-out rows (agreement with the teacher's answer, exact answers, and the calibrated cascade's
student share at a 0.8 agreement target, chosen on one half and measured on the other), and
the evaluate stage's generation checks on its prompt set (chrF against the teacher's answers,
degenerate rate).
"""

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
    models = {k: load_causal_lm(p) for k, p in dirs.items()}
    q = evaluate_models(models, held, 4, "teacher")
    demo = o.get("suite", "stdlib").startswith("demo")
    if demo:
        extra = evaluate_models(models, read_rows(prep / "extra.parquet"), 4, "teacher")
        for name, m in extra.items():
            q[name].update({f"extra_{k}": v for k, v in m.items()})
        del models
        seq = sequence_level(dirs, prep, wd)
        for name, m in seq.items():
            q[name].update(m)
    lines = {s: _store_line(prep, s) for s in ("topk", "sampled") if (prep / s).exists()}
    store_info = {s: v[1] for s, v in lines.items()}
    store_bpt = {s: v["bytes_per_token"] for s, v in store_info.items()}
    gkd = results.get("trl_gkd")
    target = gkd["curve"][-1]["ppl"] if gkd else None
    if demo:
        out = {"header": header, "opts": o, "stores": store_info, "quality": q}
        out["results"] = {
            m: {k: v for k, v in r.items() if k != "curve"} for m, r in results.items()
        }
        out["curves"] = {m: r["curve"] for m, r in results.items()}
        (wd / "result.json").write_text(json.dumps(out, indent=1, default=str))
        demo_table(results, q, o, header, info, lines)
        print(f"total wall time {header['total_seconds']:.0f} s; details in {wd / 'result.json'}")
        return
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
        f"{'model':24} {'tok/s':>6} {'train s':>7} {'proc s':>6} {'mem GiB':>11} {'B/tok':>6} "
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
            f"{r['peak_pss'] / GIB:5.2f}/{r['peak_rss_largest'] / GIB:4.2f}" if r else f"{'-':>11}"
        )
        print(
            f"{name:24} {_f(r.get('tokens_per_s'), 6, 0)} {_f(r.get('train_seconds'), 7, 0)} "
            f"{_f(r.get('process_seconds'), 6, 0)} {rss:>11} {_f(bpt, 6, 1)} "
            f"{qm['perplexity']:7.2f} {qm['next_token_accuracy']:6.3f} "
            f"{qm.get('agreement', 1.0):6.3f} {_f(tt, 9, 0)} {_f(ratio, 6, 2)} "
            f"{_f(r.get('load_avg'), 4, 1)}"
        )
    print(
        "mem: peak Σ PSS over the method's process tree (distill: incl. Ray) / peak RSS of its "
        "largest process"
    )
    _goals(results, q, store_bpt, gkd, target, time_to)
    out = {"header": header, "opts": o, "stores": store_info, "rows": rows}
    out["curves"] = {m: r["curve"] for m, r in results.items()}
    (wd / "result.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"total wall time {header['total_seconds']:.0f} s; details in {wd / 'result.json'}")


def sequence_level(dirs: dict[str, Path], prep: Path, wd: Path) -> dict[str, dict[str, Any]]:
    """Per model: greedy answers against the teacher's, and the calibrated cascade."""
    import yaml

    from distill.data.packed import read_rows
    from distill.eval.generation import generate_answers, score_answers
    from distill.eval.prompts import build_prompts
    from distill.models.loader import load_causal_lm, load_tokenizer
    from distill.pipeline import load_config
    from distill.serve.calibrate import Target
    from distill.serve.calibrate_run import (
        CalibrateConfig,
        curves_for,
        fit_and_check,
        load_prompts,
        parse_candidate,
        replay,
    )

    demo_cfg = load_config(
        Path(__file__).resolve().parent.parent / "pipelines/configs/smollm2.yaml"
    )
    gen_cfg = demo_cfg.evaluate.generation
    tok = load_tokenizer(dirs["teacher"])
    cal = CalibrateConfig(
        student=str(dirs["teacher"]),
        teacher=str(dirs["teacher"]),
        prompts=prep / "heldout.parquet",
        out=wd / "calibrate",
        target_agreement=0.8,
        max_tokens=32,
        num_prompts=64,
    )
    prompts = load_prompts(cal, tok)
    gen_prompts = build_prompts(read_rows(prep / "heldout.parquet"), tok, gen_cfg)
    teacher_replay = replay(str(dirs["teacher"]), prompts, cal)
    teacher_model = load_causal_lm(dirs["teacher"])
    teacher_answers = generate_answers(
        teacher_model, tok, gen_prompts, gen_cfg.max_new_tokens, gen_cfg.batch_size
    )
    del teacher_model
    out: dict[str, dict[str, Any]] = {}
    for name, path in dirs.items():
        if name == "teacher":
            continue
        student = replay(str(path), prompts, cal)
        data = curves_for(student, teacher_replay, cal.decide_after_tokens, cal.quantiles)
        fitted = fit_and_check(data, Target(min_agreement=0.8))
        scoring, qq, k = parse_candidate(fitted["choice"].scoring)
        model = load_causal_lm(path)
        answers = generate_answers(model, tok, gen_prompts, gen_cfg.max_new_tokens, 8)
        del model
        g = score_answers(gen_prompts, answers, teacher_answers)
        best_mean = fitted["per"].get(f"mean_logprob@{k}", {}).get("heldout", {})
        out[name] = {
            "seq_agreement": sum(data["agreement"]) / len(prompts),
            "seq_exact": sum(data["exact"]) / len(prompts),
            "cascade_student_share": 1.0 - fitted["check"].fallback_rate,
            "cascade_agreement": fitted["check"].agreement,
            "cascade_met": fitted["choice"].met,
            "cascade_scoring": f"{scoring}{f' q{qq:g}' if qq is not None else ''}@{k}",
            "cascade_share_mean_logprob": 1.0 - best_mean.get("fallback_rate", 1.0),
            "chrf_teacher": g["chrf_teacher"],
            "degenerate": g["degenerate"],
            "syntax_valid": g["syntax_valid"],
            "candidates": fitted["per"],
        }
    (wd / "sequence_level.yaml").write_text(yaml.safe_dump(out, sort_keys=False))
    return out


def demo_table(results, q, o, header, info, lines) -> None:
    print()
    for key in ("command", "machine", "date"):
        print(f"{key}: {header[key]}")
    budget = (
        f"{o['seconds']:.0f} s of training clock per method, LR constant after {o['warmup']} "
        "warmup steps"
        if o.get("seconds")
        else f"{o['steps']} steps x {o['batch_size']} rows x {o['seq_len']} tokens, cosine"
    )
    print(
        f"start: {info.get('from_run')}/pruned; rows: its soft-label store's {info.get('rows')} "
        f"rows; {budget}; lr {o['lr']}"
    )
    if any(m.endswith("onpolicy") or m.endswith("seqkd") for m in results):
        print(
            f"on-policy: lambda {o['lmbda']}, beta {o['beta']} (JSD), prompts = each row's first "
            f"{o['prompt_tokens']} tokens, {o['max_new_tokens']} sampled tokens at T "
            f"{o['temperature']}"
        )
    for line, _ in lines.values():
        print(line)
    cols = (
        f"{'model':22} {'steps':>5} {'tok/s':>6} {'train s':>7} {'mem GiB':>10} {'ppl':>7} "
        f"{'acc':>6} {'xppl':>7} {'xacc':>6} {'agr32':>6} {'exact':>6} {'chrF':>6} "
        f"{'degen':>5} {'share':>6}  cascade scoring"
    )
    print(cols)
    print("-" * len(cols))
    for name, m in q.items():
        r = results.get(name, {})
        mem = (
            f"{r['peak_pss'] / GIB:4.2f}/{r['peak_rss_largest'] / GIB:4.2f}" if r else f"{'-':>10}"
        )
        print(
            f"{name:22} {_f(r.get('steps'), 5, 0)} {_f(r.get('tokens_per_s'), 6, 0)} "
            f"{_f(r.get('train_seconds'), 7, 0)} {mem:>10} {m['perplexity']:7.2f} "
            f"{m['next_token_accuracy']:6.3f} {m['extra_perplexity']:7.2f} "
            f"{m['extra_next_token_accuracy']:6.3f} {_f(m.get('seq_agreement'), 6, 3)} "
            f"{_f(m.get('seq_exact'), 6, 3)} {_f(m.get('chrf_teacher'), 6, 1)} "
            f"{_f(m.get('degenerate'), 5, 2)} {_f(m.get('cascade_student_share'), 6, 3)}  "
            f"{m.get('cascade_scoring', '-')}"
        )
    print(
        "ppl/acc: held-out split; xppl/xacc: the extra corpus; agr32/exact: greedy 32-token "
        "answers vs the teacher's (64 held-out prompts); chrF/degen: evaluate's generation "
        "checks; share: cascade student share at agreement 0.8 on the held-out half "
        "(distill calibrate's choice on the fitting half); mem: peak PSS of the tree / largest RSS"
    )
    for name, r in results.items():
        if r.get("on_policy_steps"):
            print(
                f"{name}: {r['on_policy_steps']:.0f} of {r['steps']:.0f} steps on-policy; "
                f"sampling {r['rollout_seconds']:.0f} s of {r['train_seconds']:.0f} s "
                f"({r['rollout_tokens'] / max(r['rollout_seconds'], 1e-9):.0f} sampled tok/s)"
            )
    _demo_goals(results, q)


def _demo_goals(results, q) -> None:
    def better(a: str, b: str, keys: list[tuple[str, int]]) -> str:
        return ", ".join(
            f"{k} {q[a][k]:.3f} vs {q[b][k]:.3f} "
            f"{'MET' if (q[a][k] - q[b][k]) * sign >= 0 else 'MISSED'}"
            for k, sign in keys
        )

    seq = [("seq_agreement", 1), ("chrf_teacher", 1), ("perplexity", -1)]
    for peer in ("trl_gkd_onpolicy", "trl_gkd_seqkd"):
        if "distill_onpolicy" in q and peer in q:
            speed = results["distill_onpolicy"]["tokens_per_s"] / results[peer]["tokens_per_s"]
            print(
                f"goal distill_onpolicy vs {peer} (equal clock, >=): {better('distill_onpolicy', peer, seq)}; "
                f"tok/s {speed:.2f}x (goal >= 1.5x) {'MET' if speed >= 1.5 else 'MISSED'}"
            )
    if "distill_onpolicy" in q and "distill_offline_only" in q:
        a, b = q["distill_onpolicy"], q["distill_offline_only"]
        ratio = a["cascade_student_share"] / max(b["cascade_student_share"], 1e-9)
        print(
            f"goal cascade vs offline-only: student share {a['cascade_student_share']:.3f} vs "
            f"{b['cascade_student_share']:.3f} = {ratio:.2f}x (goal >= 2x) "
            f"{'MET' if ratio >= 2 else 'MISSED'}; degenerate {a['degenerate']:.2f} vs "
            f"{b['degenerate']:.2f} {'MET' if a['degenerate'] <= b['degenerate'] else 'MISSED'}"
        )
    if "distill_demo" in q and "trl_gkd" in q:
        keys = [
            ("perplexity", -1),
            ("next_token_accuracy", 1),
            ("extra_perplexity", -1),
            ("extra_next_token_accuracy", 1),
        ]
        print(
            f"goal distill_demo vs trl_gkd (equal tokens, >=): {better('distill_demo', 'trl_gkd', keys)}"
        )


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
            f"train tok/s {speed:.2f}x GKD (goal >= 2x); peak memory {r['peak_pss'] / GIB:.2f} vs "
            f"{gkd['peak_pss'] / GIB:.2f} GiB (goal <=)"
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
