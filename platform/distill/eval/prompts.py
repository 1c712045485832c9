"""The evaluation prompt set: fixed, versioned, built from held-out documents only.

Held-out rows are decoded back to text (documents are separated by EOS in the packed stream), so
the set works for any corpus. Three kinds of task, each with the document's own answer kept as
``reference``:

- ``code``: a complete function found in a held-out document: its signature + docstring is the
  prompt, its body the reference (syntax-checked later);
- ``chat``: "what does this function do?" with the function (docstring removed) in a chat
  message; the docstring's first sentence is the reference;
- ``text``: a held-out passage to continue; the next tokens are the reference.

Selection is deterministic (sorted by content hash); the file records ``PROMPT_SET_VERSION``
(bump it when this builder changes) and a sha256 of the prompts, and is reused while the held-out
split and the settings are unchanged::

    prompts = prompt_set(ctx.corpus, tok, GenerationEvalConfig(), workdir / "eval")
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import atomic_file
from distill.eval.config import GenerationEvalConfig

# 2: code prompts end with the body's indentation; 3: ... where the tokenizer splits it
PROMPT_SET_VERSION = 3
CHAT_QUESTION = "What does this Python function do? Answer in one sentence."
_DEF = re.compile(r"^([ \t]*)(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(")
MAX_BODY_LINES = 15
MAX_BODY_CHARS = 600

Prompt = dict[str, Any]


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def heldout_documents(rows: np.ndarray, eos_id: int, tok: Any) -> list[tuple[str, bool]]:
    """The packed held-out stream cut at EOS and decoded: ``(text, ends_complete)`` per
    document (the last one is cut by the end of the stream)."""
    stream = np.asarray(rows).reshape(-1)
    cuts = np.flatnonzero(stream == eos_id).tolist()
    docs, start = [], 0
    for end in [*cuts, len(stream)]:
        if end > start:
            text = tok.decode(stream[start:end].tolist(), skip_special_tokens=True)
            if text.strip():
                docs.append((text, end < len(stream)))
        start = end + 1
    return docs


def _function_sources(text: str, complete: bool) -> list[str]:
    """Complete ``def`` blocks of a document, dedented; a block running into the end of an
    incomplete document is dropped (it may be cut)."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        m = _DEF.match(line)
        if not m:
            continue
        indent = len(m.group(1).expandtabs())
        j = i + 1
        while j < len(lines):
            s = lines[j]
            if s.strip() and len(s) - len(s.lstrip()) <= indent and not s.lstrip().startswith(")"):
                break
            j += 1
        if j == len(lines) and not complete:
            continue
        out.append(textwrap.dedent("\n".join(lines[i:j])).rstrip() + "\n")
    return out


def _split_function(src: str) -> tuple[str, str, str, str] | None:
    """(signature + docstring, body, function without docstring, docstring) or None."""
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    fn = tree.body[0]
    doc = ast.get_docstring(fn)
    if not doc or len(fn.body) < 2 or fn.body[0].end_lineno is None:
        return None
    lines = src.split("\n")
    head = "\n".join(lines[: fn.body[0].end_lineno]) + "\n"
    body = "\n".join(lines[fn.body[0].end_lineno :]).rstrip() + "\n"
    if not body.strip() or body.count("\n") > MAX_BODY_LINES or len(body) > MAX_BODY_CHARS:
        return None
    fn.body = fn.body[1:]
    return head, body, ast.unparse(fn), doc


def _first_sentence(doc: str) -> str:
    para = " ".join(doc.strip().split("\n\n")[0].split())
    m = re.match(r"(.+?[.!?])(\s|$)", para)
    return m.group(1) if m else para


def token_boundary(tok: Any) -> Any:
    """``start(text, pos)``: where the token of ``tok``'s encoding of ``text`` that holds
    character ``pos`` begins (``pos`` itself for a tokenizer without offsets)."""

    def start(text: str, pos: int) -> int:
        try:  # slow (Python) tokenizers have no offsets
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError):
            return pos
        begins = [a for a, b in enc.get("offset_mapping") or () if a <= pos < b]
        return begins[0] if begins else pos

    return start


def function_tasks(
    docs: list[tuple[str, bool]], n_tokens: Any, max_prompt_tokens: int, token_start: Any = None
) -> list[Prompt]:
    """``code`` and ``chat`` candidates from every complete documented function.

    A code prompt is the signature and docstring and the body's indentation, cut where the
    tokenizer would split the real body (``token_start``, see :func:`token_boundary`): BPE
    tokenizers encode ``"\n    if"`` as ``"\n   "`` + ``" if"``, so a prompt ending with the
    whole indentation ends on a token the model rarely saw before code (SmolLM2 answered it
    with a new line and a new ``def`` at column 0).
    """
    out: list[Prompt] = []
    seen: set[str] = set()
    for doc, complete in docs:
        for src in _function_sources(doc, complete):
            parts = _split_function(src)
            if parts is None or _hash(src) in seen:
                continue
            seen.add(_hash(src))
            head, body, bare, docstring = parts
            if n_tokens(head) > max_prompt_tokens:
                continue
            # the prompt ends with the body's indentation, so a completion model writes code
            # (without it the instruct teacher explained the function: 0 of 8 bodies parsed)
            text = head + body
            code_at = len(text) - len(body.lstrip(" \t"))
            cut = max(len(head), token_start(text, code_at)) if token_start else code_at
            code = {"kind": "code", "prompt": text[:cut], "reference": text[cut:]}
            out.append({**code, "messages": None})
            question = f"{CHAT_QUESTION}\n\n```python\n{bare}\n```"
            if n_tokens(question) <= max_prompt_tokens:
                msgs = [{"role": "user", "content": question}]
                ref = _first_sentence(docstring)
                out.append({"kind": "chat", "prompt": None, "messages": msgs, "reference": ref})
    return out


def text_tasks(rows: np.ndarray, eos_id: int, tok: Any, prompt_tokens: int, answer_tokens: int):
    """``text`` candidates: a passage of ``prompt_tokens`` tokens from inside one document and
    the ``answer_tokens`` that follow it."""
    stream = np.asarray(rows).reshape(-1)
    span = prompt_tokens + answer_tokens
    out: list[Prompt] = []
    for start in range(0, len(stream) - span + 1, span):
        window = stream[start : start + span]
        if (window == eos_id).any():
            continue
        prompt = tok.decode(window[:prompt_tokens].tolist(), skip_special_tokens=True)
        ref = tok.decode(window[prompt_tokens:].tolist(), skip_special_tokens=True)
        if prompt.strip() and ref.strip():
            out.append({"kind": "text", "prompt": prompt, "messages": None, "reference": ref})
    return out


def _pick(cands: list[Prompt], n: int) -> list[Prompt]:
    for c in cands:
        body = c["prompt"] if c["prompt"] is not None else json.dumps(c["messages"])
        c["id"] = f"{c['kind']}-{_hash(body)[:12]}"
    return sorted(cands, key=lambda c: c["id"])[:n]


def build_prompts(rows: np.ndarray, tok: Any, cfg: GenerationEvalConfig) -> list[Prompt]:
    """The prompt set for held-out ``rows`` (token ids of the teacher's tokenizer)."""
    eos = tok.eos_token_id
    docs = heldout_documents(rows, eos, tok)

    def n_tokens(s: str) -> int:
        return len(tok(s, add_special_tokens=False)["input_ids"])

    funcs = function_tasks(docs, n_tokens, cfg.prompt_tokens, token_boundary(tok))
    has_chat = bool(getattr(tok, "chat_template", None))
    code = _pick([f for f in funcs if f["kind"] == "code"], cfg.code_prompts)
    chat = _pick([f for f in funcs if f["kind"] == "chat"], cfg.chat_prompts) if has_chat else []
    text_len = max(8, cfg.prompt_tokens // 2)
    text = _pick(text_tasks(rows, eos, tok, text_len, cfg.max_new_tokens), cfg.text_prompts)
    return code + chat + text


def prompt_set(
    rows: np.ndarray, fingerprint: str, tok: Any, cfg: GenerationEvalConfig, out_dir: Path
) -> dict[str, Any]:
    """The prompt set file ``out_dir/prompts.json`` (built once per held-out split + settings)."""
    built_from = {
        "version": PROMPT_SET_VERSION,
        "heldout_fingerprint": fingerprint,
        "heldout_rows": int(len(rows)),
        "settings": cfg.model_dump(mode="json", exclude={"enabled", "batch_size"}),
    }
    path = Path(out_dir) / "prompts.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("built_from") == built_from:
            return old
    prompts = build_prompts(rows, tok, cfg)
    body = json.dumps(prompts, sort_keys=True)
    kinds = {k: sum(p["kind"] == k for p in prompts) for k in ("code", "chat", "text")}
    data = {
        "version": PROMPT_SET_VERSION,
        "sha256": _hash(body),
        "counts": kinds,
        "built_from": built_from,
        "prompts": prompts,
    }
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return data
