"""Generation-level checks: every model answers the prompt set; answers are scored against the
teacher's answers and the held-out documents' own continuations.

Per model (``report.json`` → ``models[i].generation``): ``syntax_valid`` (code answers that
parse), ``chrf_teacher`` / ``chrf_reference`` (chrF, sacrebleu, 0-100), ``repetition`` (mean
share of repeated word 3-grams), ``degenerate`` (share of empty or mostly repeated answers),
``length_ratio`` (answer characters / the teacher's), ``confidence`` (mean of the serve cascade's
``mean_logprob`` score). Every answer's confidence under each serve scoring is kept too: it is the
evaluation-time distribution ``distill monitor`` compares live traffic with::

    answers = generate_answers(model, tok, prompts, max_new_tokens=48, batch_size=8)
    scores = score_answers(prompts, answers, teacher_answers)
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from distill.confidence import SCORINGS, confidence
from distill.data.filters import repeated_fraction
from distill.models.stopping import stop_token_ids

REPEAT_NGRAM = 3  # the seq-KD repetition filter's defaults (distill.data.filters)
DEGENERATE_REPEATED = 0.5


@dataclass
class Answer:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    scores: dict[str, float] = field(default_factory=dict)  # serve scorings, each in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render(tok: Any, p: dict[str, Any]) -> tuple[str, bool]:
    """The text a model sees for prompt ``p`` and whether it is chat (as the serve engine does)."""
    if p.get("messages") is not None:
        text = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
        return text, True
    return p["prompt"], False


def _generate_batch(model: Any, tok: Any, texts: list[str], chat: bool, max_new_tokens: int):
    import torch

    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    device = next(model.parameters()).device
    stop = stop_token_ids(tok, model.generation_config.eos_token_id, model.config.eos_token_id)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    with torch.inference_mode():
        out = model.generate(
            **{k: v.to(device) for k, v in enc.items()},
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=stop,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[:, enc["input_ids"].shape[1] :].cpu()
    logits = torch.stack(out.logits, dim=1).float().cpu()
    answers = []
    for j in range(new.shape[0]):
        hits = torch.isin(new[j], torch.tensor(stop)).nonzero()
        end = int(hits[0]) if len(hits) else new.shape[1]
        scored = end + 1 if len(hits) else end  # the stop token is part of the answer
        ids = new[j, :scored]
        scores = {s: confidence(logits[j, :scored], ids, s) for s in SCORINGS}
        text = tok.decode(new[j, :end].tolist(), skip_special_tokens=True)
        answers.append(Answer(text, end, "stop" if len(hits) else "length", scores))
    return answers


def generate_answers(
    model: Any, tok: Any, prompts: Sequence[dict[str, Any]], max_new_tokens: int, batch_size: int
) -> list[Answer]:
    """Greedy answers in prompt order; batches hold prompts of one kind (chat or not)."""
    rendered = [render(tok, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (rendered[i][1], len(rendered[i][0])))
    out: dict[int, Answer] = {}
    i = 0
    while i < len(order):
        chat = rendered[order[i]][1]
        batch = [order[i]]
        while (
            len(batch) < batch_size
            and i + len(batch) < len(order)
            and rendered[order[i + len(batch)]][1] == chat
        ):
            batch.append(order[i + len(batch)])
        texts = [rendered[k][0] for k in batch]
        for k, a in zip(
            batch, _generate_batch(model, tok, texts, chat, max_new_tokens), strict=True
        ):
            out[k] = a
        i += len(batch)
    return [out[k] for k in range(len(prompts))]


def code_answer_parses(prompt: str, answer: Answer) -> bool:
    """Signature + docstring + the answer up to the function's end parse, with ≥ 1 statement.

    A line back at column 0 ends the function; an answer cut by ``max_new_tokens`` loses its
    last (possibly partial) line.
    """
    base, _, partial = prompt.rpartition("\n")  # the prompt's last line (the indentation)
    lines = (partial + answer.text).split("\n")
    kept = []
    for line in lines:
        if line.strip() and not line[0].isspace():
            break
        kept.append(line)
    else:
        if answer.finish_reason == "length" and kept:
            kept = kept[:-1]
    try:
        tree = ast.parse(base + "\n" + "\n".join(kept))
    except (SyntaxError, ValueError):
        return False
    fn = tree.body[0] if len(tree.body) == 1 else None
    return isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and len(fn.body) >= 2


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence chrF (character n-gram F-score, β=2) in [0, 100], via sacrebleu."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(hypothesis, [reference]).score)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def score_answers(
    prompts: Sequence[dict[str, Any]],
    answers: Sequence[Answer],
    teacher: Sequence[Answer] | None,
) -> dict[str, float | None]:
    """The generation metrics of one model (``teacher`` = the teacher's answers, None for it)."""
    code = [
        code_answer_parses(p["prompt"], a)
        for p, a in zip(prompts, answers, strict=True)
        if p["kind"] == "code"
    ]
    rep = [repeated_fraction(a.text, REPEAT_NGRAM) for a in answers]
    degenerate = [
        not a.text.strip() or r > DEGENERATE_REPEATED for a, r in zip(answers, rep, strict=True)
    ]
    ref = [chrf(a.text, p["reference"]) for p, a in zip(prompts, answers, strict=True)]
    out: dict[str, float | None] = {
        "syntax_valid": _mean([float(c) for c in code]),
        "chrf_reference": _mean(ref),
        "repetition": _mean(rep),
        "degenerate": _mean([float(d) for d in degenerate]),
        "confidence": _mean([a.scores["mean_logprob"] for a in answers]),
        "answers": float(len(answers)),
    }
    if teacher is not None:
        out["chrf_teacher"] = _mean(
            [chrf(a.text, t.text) for a, t in zip(answers, teacher, strict=True)]
        )
        t_chars = sum(len(t.text) for t in teacher)
        out["length_ratio"] = sum(len(a.text) for a in answers) / t_chars if t_chars else None
    else:
        out["length_ratio"] = 1.0
    return out


def confidence_distribution(answers: Sequence[Answer]) -> dict[str, list[float]]:
    """Per serve scoring, every answer's confidence (what ``distill monitor`` compares with)."""
    names = answers[0].scores.keys() if answers else ()
    return {s: [round(a.scores[s], 6) for a in answers] for s in names}
