"""Prompt files (errors with line numbers, skip | error) and docstring-derived tasks."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from distill.config.base import DistillError
from distill.seqkd.config import DecodingConfig, GenerateConfig, PromptsConfig
from distill.seqkd.prompts import (
    docstring_tasks,
    finalize,
    load_prompts,
    read_prompt_file,
    split_of,
)

LINES = [
    json.dumps({"prompt": "What is 2 + 2?", "id": "a"}),
    "{this is not json",
    json.dumps({"question": "no prompt field"}),
    json.dumps({"messages": [{"role": "user", "content": "Hello"}]}),
    "",
    json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
    json.dumps(["a", "list"]),
    json.dumps({"prompt": "   "}),
]


def test_bad_lines_are_reported_with_line_numbers_and_skipped(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("\n".join(LINES) + "\n")
    rows, problems = read_prompt_file(p, "skip")
    assert [r["id"] for r in rows] == ["a", "prompts.jsonl:4"]
    assert rows[1]["messages"] == [{"role": "user", "content": "Hello"}]
    numbers = [int(x.split(":")[1]) for x in problems]
    assert numbers == [2, 3, 6, 7, 8]
    assert "invalid JSON" in problems[0] and "'prompt' or a 'messages'" in problems[1]
    assert "role must be one of" in problems[2] and "'prompt' is empty" in problems[4]


def test_bad_line_refused_when_configured(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("\n".join(LINES) + "\n")
    with pytest.raises(DistillError, match=r"prompts.jsonl:2: invalid JSON"):
        read_prompt_file(p, "error")
    cfg = PromptsConfig(source="file", path=tmp_path / "missing.jsonl")
    with pytest.raises(DistillError, match="does not exist"):
        load_prompts(cfg, [])
    p.write_text("{bad\n")
    with pytest.raises(DistillError, match="no usable prompt.*1 bad line"):
        load_prompts(PromptsConfig(source="file", path=p), [])


def test_docstring_tasks_and_split_are_deterministic(tmp_path):
    src = '''
def add(a, b=1, *args, key=None):
    """Return the sum of two numbers, adding b to a in the usual way.

    More detail that is not used.
    """
    return a + b

def _private(x):
    """A private helper that should never become a prompt at all."""

def nodoc(x):
    return x

class K:
    def method(self):
        """Methods are not module-level functions, so they are skipped."""
'''
    tasks = docstring_tasks(src, "m.py", 20, 600)
    assert len(tasks) == 1 and tasks[0]["kind"] == "code"
    assert tasks[0]["prompt"] == (
        "Write a Python function `add(a, b=1, *args, key=None)` that: "
        "Return the sum of two numbers, adding b to a in the usual way. "
        "Reply with only the code, in one ```python block."
    )
    assert docstring_tasks("def broken(:\n", "x.py", 1, 100) == []
    f = tmp_path / "m.py"
    f.write_text(src)
    held = tmp_path / "held.py"
    held.write_text(src.replace("add", "sub"))
    rows, _ = load_prompts(PromptsConfig(heldout_fraction=0.5), [f, held], None)
    assert {r["id"] for r in rows} == {f"{f}::add", f"{held}::sub"}
    # the corpus' held-out documents never become prompts
    (tmp_path / "meta.json").write_text(json.dumps({"heldout_doc_ids": [str(held)]}))
    rows, _ = load_prompts(PromptsConfig(), [f, held], tmp_path)
    assert [r["id"] for r in rows] == [f"{f}::add"]


def test_finalize_dedupes_caps_and_splits_by_hash():
    rows = [
        {"prompt": f"task {i}", "messages": None, "kind": "text", "id": str(i)} for i in range(200)
    ]
    rows += rows[:10]
    out = finalize(rows, PromptsConfig(source="docstrings", max_prompts=150, heldout_fraction=0.2))
    assert len(out) == 150 and len({r["key"] for r in out}) == 150
    held = sum(r["split"] == "heldout" for r in out)
    assert 10 < held < 60  # ~20 %, not biased by the hash-ordered selection
    assert all(split_of(r["key"], 0.2) == r["split"] for r in out)
    again = finalize(list(reversed(rows)), PromptsConfig(max_prompts=150, heldout_fraction=0.2))
    assert [r["key"] for r in again] == [r["key"] for r in out]


def test_config_validation_messages():
    with pytest.raises(ValidationError, match="prompts.path is required"):
        PromptsConfig(source="file")
    with pytest.raises(ValidationError, match="identical completions"):
        DecodingConfig(n=4, temperature=0)
    with pytest.raises(ValidationError, match="less than or equal to 0.5"):
        GenerateConfig.model_validate({"teacher": {"kind": "local", "cpus_per_actor": 1}})
    with pytest.raises(ValidationError, match="base_url"):
        GenerateConfig.model_validate({"teacher": {"kind": "http", "base_url": "x", "model": "m"}})
    with pytest.raises(ValidationError, match="kind"):
        GenerateConfig.model_validate({"teacher": {"kind": "carrier-pigeon"}})
