"""Prompt sets for the ``generate`` stage: a JSONL file, or tasks derived from Python docstrings.

A prompt row is ``{id, prompt | messages, kind, split}``; ``split`` (train / heldout) is fixed by
the prompt's hash, so the same prompt lands on the same side in every run::

    prompts = load_prompts(PromptsConfig(source="file", path=Path("prompts.jsonl")), files=[])
    # JSONL lines: {"prompt": "..."}  or  {"messages": [{"role": "user", "content": "..."}]}
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.seqkd.config import PromptsConfig

log = logging.getLogger(__name__)

Prompt = dict[str, Any]
_ROLES = {"system", "user", "assistant"}
CODE_ONLY = "Reply with only the code, in one ```python block."


def prompt_key(p: Prompt) -> str:
    body = p["prompt"] if p.get("prompt") is not None else json.dumps(p["messages"])
    return hashlib.sha256(body.encode()).hexdigest()


def split_of(key: str, heldout_fraction: float) -> str:
    """train / heldout by a hash independent of the selection order (which sorts by key)."""
    h = hashlib.sha256(f"split:{key}".encode()).hexdigest()
    return "heldout" if int(h[:8], 16) / 0xFFFFFFFF < heldout_fraction else "train"


def _check_messages(msgs: Any) -> str | None:
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return f"messages[{i}] needs a string 'content'"
        if m.get("role") not in _ROLES:
            return f"messages[{i}].role must be one of {sorted(_ROLES)}, got {m.get('role')!r}"
    if msgs[-1]["role"] == "assistant":
        return "the last message must not be the assistant's (the teacher writes it)"
    return None


def read_prompt_file(path: Path, on_bad_line: str = "skip") -> tuple[list[Prompt], list[str]]:
    """Rows of a JSONL prompt file and the problems found (``path:line: what``)."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"generate.prompts.path: {path} does not exist")
    rows: list[Prompt] = []
    problems: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            err: str | None = None
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                obj, err = None, f"invalid JSON ({e.msg} at column {e.colno})"
            if err is None and not isinstance(obj, dict):
                err = "expected a JSON object"
            elif err is None and isinstance(obj.get("prompt"), str):
                err = None if obj["prompt"].strip() else "'prompt' is empty"
            elif err is None and "messages" in obj:
                err = _check_messages(obj["messages"])
            elif err is None:
                err = "needs a string 'prompt' or a 'messages' list"
            if err is not None:
                msg = f"{path}:{lineno}: {err}"
                if on_bad_line == "error":
                    raise DistillError(f"bad prompt line (on_bad_line: error): {msg}")
                log.warning("skipping %s", msg)
                problems.append(msg)
                continue
            assert isinstance(obj, dict)
            rows.append(
                {
                    "id": str(obj.get("id", f"{path.name}:{lineno}")),
                    "prompt": obj.get("prompt") if isinstance(obj.get("prompt"), str) else None,
                    "messages": obj.get("messages") if obj.get("prompt") is None else None,
                    "kind": str(obj.get("kind", "text")),
                }
            )
    return rows, problems


def _first_paragraph(doc: str) -> str:
    return " ".join(doc.strip().split("\n\n")[0].split())


def docstring_tasks(source: str, doc_id: str, min_chars: int, max_chars: int) -> list[Prompt]:
    """``Write a Python function `name(args)` that: <docstring>`` for each public function."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        text = _first_paragraph(doc)
        if not (min_chars <= len(text) <= max_chars):
            continue
        sig = f"{node.name}({ast.unparse(node.args)})"
        out.append(
            {
                "id": f"{doc_id}::{node.name}",
                "prompt": f"Write a Python function `{sig}` that: {text} {CODE_ONLY}",
                "messages": None,
                "kind": "code",
            }
        )
    return out


def heldout_doc_ids(corpus_root: Path | None) -> set[str]:
    """Documents the packed corpus holds out (never turned into training prompts)."""
    meta = Path(corpus_root or "") / "meta.json"
    if corpus_root is None or not meta.exists():
        return set()
    return set(json.loads(meta.read_text()).get("heldout_doc_ids", []))


def derive_prompts(files: Iterable[Path], cfg: PromptsConfig, exclude: set[str]) -> list[Prompt]:
    rows: list[Prompt] = []
    used = 0
    for f in files:
        if f.suffix != ".py" or str(f) in exclude:
            continue
        if cfg.max_files is not None and used >= cfg.max_files:
            break
        used += 1
        src = f.read_text(encoding="utf-8", errors="replace")
        rows.extend(docstring_tasks(src, str(f), cfg.min_doc_chars, cfg.max_doc_chars))
    return rows


def finalize(rows: list[Prompt], cfg: PromptsConfig) -> list[Prompt]:
    """Dedupe by content, order by hash, keep ``max_prompts``, assign the held-out split."""
    by_key: dict[str, Prompt] = {}
    for r in rows:
        by_key.setdefault(prompt_key(r), r)
    keys = sorted(by_key)[: cfg.max_prompts]
    return [{**by_key[k], "key": k, "split": split_of(k, cfg.heldout_fraction)} for k in keys]


def load_prompts(
    cfg: PromptsConfig, files: Iterable[Path], corpus_root: Path | None = None
) -> tuple[list[Prompt], list[str]]:
    """The prompt set of a run and the problems met while reading it."""
    if cfg.source == "file":
        assert cfg.path is not None
        rows, problems = read_prompt_file(cfg.path, cfg.on_bad_line)
        where = str(cfg.path)
    else:
        rows, problems = derive_prompts(files, cfg, heldout_doc_ids(corpus_root)), []
        where = "the corpus' .py files (docstrings)"
    out = finalize(rows, cfg)
    if not out:
        raise DistillError(f"no usable prompt in {where} ({len(problems)} bad line(s))")
    return out, problems


def messages_of(row: Prompt) -> list[dict[str, str]]:
    msgs = row.get("messages_json") or row.get("messages")
    if isinstance(msgs, str):
        msgs = json.loads(msgs) if msgs else None
    return list(msgs) if msgs else [{"role": "user", "content": row["prompt"]}]


def prompt_text(row: Prompt) -> str:
    """The plain prompt (the last user message for chat rows): what filters and dedup see."""
    if row.get("prompt") and not row.get("messages_json") and not row.get("messages"):
        return str(row["prompt"])
    return messages_of(row)[-1]["content"]


def render_prompt(tokenizer: Any, row: Prompt, chat_template: bool) -> str:
    """The exact text the teacher continues (and the student is trained to continue)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages_of(row), tokenize=False, add_generation_prompt=True
        )
    return "\n\n".join(m["content"] for m in messages_of(row)) + "\n"
