"""Drift monitoring end to end, without a server: the evaluate stage records the student's
confidence on held-out code; live traffic (300 code prompts, then 200 prose prompts) goes through
the cascade decision and the request log, as in the Router; ``distill monitor`` must stay quiet on
the code and flag the shift within 200 requests.

Student = ``code_lm`` (a tiny Llama trained briefly on code: sure how a documented function goes
on, unsure about prose).
"""

import json

import pytest

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_torch_thread")]

SHIFT_AT, PROSE = 300, 200


def _code_prompts(files, n, tok):
    """Code prompts as the evaluate stage builds them (same token budget, counted in tokens)."""
    from distill.eval.config import GenerationEvalConfig
    from distill.eval.prompts import function_tasks, token_boundary

    docs = [(f.read_text(errors="replace"), True) for f in files]
    budget = GenerationEvalConfig().prompt_tokens

    def n_tokens(s: str) -> int:
        return len(tok(s, add_special_tokens=False)["input_ids"])

    tasks = function_tasks(docs, n_tokens, budget, token_boundary(tok))
    return [t["prompt"] for t in tasks if t["kind"] == "code"][:n]


def _code_sources(n_held, n_live, tok):
    """Stdlib files with documented functions, alternately held out (for evaluate) or used for
    live code prompts; live prompts shuffled, as many users' requests interleave."""
    import random

    from distill.data.corpus import stdlib_files

    held, live = [], []
    for f in stdlib_files()[300:]:
        tasks = _code_prompts([f], 1000, tok)
        if len(tasks) < 3:
            continue
        if len(held) < n_held and len(held) * 10 <= len(live):
            held.append(f)
        else:
            live.extend(tasks)
        if len(held) == n_held and len(live) >= n_live:
            break
    random.Random(0).shuffle(live)
    return held, live[:n_live]


def _prose_prompts(n):
    from pydoc_data.topics import topics

    out = []
    for text in topics.values():
        for para in text.split("\n\n")[1:]:
            para = " ".join(para.split())
            if len(para) > 100 and para[0].isupper():
                out.append(para[: para.rfind(" ", 0, 160)])
    return out[:n]


def _traffic(model, tok, prompts, log, cascade):
    """Each prompt answered as the Router does: student, cascade decision, one log record."""
    from distill.eval.generation import generate_answers
    from distill.serve.confidence import decide

    answers = generate_answers(model, tok, [{"prompt": p} for p in prompts], 4, 16)
    for a in answers:
        conf = a.scores[cascade.scoring]
        d = decide(conf, cascade)
        ms = {"student": 5.0, **({"teacher": 9.0} if d.fallback else {})}
        info = {
            "answered_by": d.answered_by,
            "fallback": d.fallback,
            "reason": d.reason,
            "confidence": conf,
            "scoring": cascade.scoring,
            "threshold": cascade.threshold,
            "latency_ms": ms,
        }
        usage = {"prompt_tokens": 20, "completion_tokens": a.completion_tokens}
        log.record("cascade", info, usage, sum(ms.values()), {"prompt": "x"})


def test_code_then_prose_traffic_is_flagged_within_200_requests(stage_ctx, code_lm, tmp_path):
    from distill.cli import main
    from distill.data.packed import write_rows
    from distill.data.packing import pack
    from distill.eval.config import EvaluateConfig
    from distill.eval.stage import run
    from distill.models.loader import load_causal_lm, load_tokenizer
    from distill.monitor.config import RequestLogConfig
    from distill.monitor.log import RequestLog
    from distill.monitor.report import format_summary, run_monitor
    from distill.serve.config import CascadeConfig

    tok = load_tokenizer(code_lm)
    held_files, code = _code_sources(40, SHIFT_AT, tok)
    assert len(code) == SHIFT_AT
    # evaluation time: held-out code documents -> the prompt set -> the student's confidences
    ctx = stage_ctx(["evaluate"])
    held = [tok(f.read_text(), add_special_tokens=False)["input_ids"] for f in held_files]
    write_rows(ctx.corpus.heldout_path, pack(held, 64, tok.eos_token_id, max_rows=1000))
    ctx.artifacts["student"] = code_lm
    gen = {"code_prompts": 64, "chat_prompts": 0, "text_prompts": 0, "max_new_tokens": 4}
    cfg = EvaluateConfig(
        max_rows=8, batch_size=8, speed={"new_tokens": 4, "repeats": 1}, generation=gen
    )
    report = run(ctx, cfg).summary
    reference = report["generation"]["confidence"]["student"]["mean_logprob"]
    assert len(reference) >= 40

    # live traffic through the cascade decision into the request log
    log_dir = tmp_path / "requests"
    log = RequestLog(RequestLogConfig(path=log_dir, rows_per_file=64, flush_interval_s=3600))
    cascade = CascadeConfig(threshold=0.2, scoring="mean_logprob")
    model = load_causal_lm(code_lm)
    _traffic(model, tok, code, log, cascade)
    _traffic(model, tok, _prose_prompts(PROSE), log, cascade)
    log.close()

    report_path = ctx.workdir / "report.json"
    result = run_monitor(log_dir, report_path, "student", None, 100, 25, 1e-3, tmp_path / "mon")
    print("\n".join(format_summary(result)))
    assert result.requests == SHIFT_AT + PROSE and result.scoring == "mean_logprob"
    before = [w for w in result.windows if w.end <= SHIFT_AT]
    print([f"{w.end}:{w.p_value:.2g}" for w in result.windows])
    assert before and not any(w.drift for w in before), [w.p_value for w in before]
    first = result.first_drift
    assert first is not None and SHIFT_AT < first.end <= SHIFT_AT + PROSE
    late = [w for w in result.windows if w.start >= SHIFT_AT]
    assert late and all(w.drift for w in late)
    assert (tmp_path / "mon" / "monitor.png").stat().st_size > 0
    saved = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    assert saved["drift"] and saved["fallback_rate"] > saved["expected_fallback_rate"]
    assert any("DRIFT" in line for line in format_summary(result))
    # the CLI: same analysis, exit code 3 with --fail-on-drift
    argv = ["monitor", str(log_dir), "--reference", str(report_path), "--out", str(tmp_path)]
    assert main(argv) == 0 and main([*argv, "--fail-on-drift"]) == 3
