"""Prompt-set building from held-out text and the generation metrics (no model)."""

import re

import numpy as np

from distill.eval.generation import Answer, chrf, code_answer_parses, score_answers
from distill.eval.prompts import (
    CHAT_QUESTION,
    function_tasks,
    heldout_documents,
    text_tasks,
    token_boundary,
)

DOC = '''import os

class Walker:
    def visit(self, node):
        """Visit a node and return its children."""
        out = []
        for child in node:
            out.append(child)
        return out

def join(a, b):
    """Join two paths with the separator."""
    return os.path.join(a, b)

def undocumented(x):
    return x

def cut_off(x):
    """This one is cut by the end of the fragment."""
    return x +'''


def _words(s: str) -> int:
    return len(s.split())


def test_function_tasks_find_complete_documented_functions():
    tasks = function_tasks([(DOC, False)], _words, 64)
    code = [t for t in tasks if t["kind"] == "code"]
    assert [t["prompt"].split("(")[0] for t in code] == ["def visit", "def join"]
    visit = code[0]
    # the prompt ends with the body's indentation; the reference is the rest of the body
    assert visit["prompt"].endswith('"""Visit a node and return its children."""\n    ')
    assert visit["reference"].startswith("out = []") and "return out" in visit["reference"]
    chat = [t for t in tasks if t["kind"] == "chat"]
    assert chat[1]["reference"] == "Join two paths with the separator."
    question = chat[1]["messages"][0]["content"]
    assert question.startswith(CHAT_QUESTION) and "os.path.join" in question
    assert "Join two paths" not in question  # the docstring (the answer) is removed
    # a long prompt is skipped
    assert function_tasks([(DOC, False)], _words, 3) == []


class BpeLikeTok:
    """Offsets like a GPT-2-style BPE: a run of spaces gives its last one to the next word."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        spans = [m.span() for m in re.finditer(r"\n? *(?= \S)| ?\w+|\s+|\S", text)]
        return {"input_ids": list(range(len(spans))), "offset_mapping": spans}


def test_code_prompts_end_where_the_tokenizer_splits_the_body():
    tasks = function_tasks([(DOC, False)], _words, 64, token_boundary(BpeLikeTok()))
    visit = [t for t in tasks if t["kind"] == "code"][0]
    # "\n    out" encodes as "\n   " + " out": the prompt keeps three of the four spaces
    assert visit["prompt"].endswith('children."""\n   ')
    assert visit["reference"].startswith(" out = []")
    assert code_answer_parses(
        visit["prompt"], Answer(" out = list(node)\n    return out", 9, "stop")
    )
    # a tokenizer without offsets: the whole indentation, as before
    plain = function_tasks([(DOC, False)], _words, 64, token_boundary(lambda *a, **k: {}))
    assert plain[0]["prompt"].endswith('children."""\n    ')


def test_documents_split_at_eos_and_passages_avoid_it():
    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids)

    rows = np.array([[1, 2, 3, 0, 4, 5], [6, 7, 8, 9, 10, 11]])
    docs = heldout_documents(rows, 0, Tok())
    assert docs == [("w1 w2 w3", True), ("w4 w5 w6 w7 w8 w9 w10 w11", False)]
    tasks = text_tasks(rows, 0, Tok(), prompt_tokens=2, answer_tokens=2)
    assert [(t["prompt"], t["reference"]) for t in tasks] == [
        ("w4 w5", "w6 w7"),
        ("w8 w9", "w10 w11"),
    ]


def test_code_answers_are_parsed_up_to_the_function_end():
    head = 'def f(x):\n    """Double x."""\n'
    assert code_answer_parses(head, Answer("    return 2 * x\n\nprint(f(2))\n", 8, "stop"))
    assert not code_answer_parses(head, Answer("    return 2 *\n", 4, "stop"))
    assert not code_answer_parses(head, Answer("", 0, "stop"))  # a docstring alone is no body
    # cut by max_new_tokens: the partial last line is dropped, the rest must parse
    assert code_answer_parses(head, Answer("    y = 2 * x\n    return y +", 9, "length"))
    # a prompt ending with the body's indentation: the answer continues that line
    primed = head + "    "
    assert code_answer_parses(primed, Answer("return 2 * x\n\nprint(f(2))\n", 8, "stop"))
    assert not code_answer_parses(primed, Answer("```\nThe function doubles x.", 9, "stop"))
    assert not code_answer_parses(primed, Answer("return 2 *", 4, "length"))


def test_scores_against_teacher_and_reference():
    prompts = [
        {
            "kind": "code",
            "prompt": 'def f(x):\n    """Double x."""\n',
            "reference": "    return 2 * x\n",
        },
        {"kind": "text", "prompt": "The quick brown", "reference": " fox jumps over"},
    ]
    teacher = [
        Answer("    return 2 * x\n", 6, "stop", {"mean_logprob": 0.9}),
        Answer(" fox jumps", 3, "stop", {"mean_logprob": 0.7}),
    ]
    loop = [
        Answer("    return return return return return return", 6, "length", {"mean_logprob": 0.2}),
        Answer("the the the the the the the the", 8, "length", {"mean_logprob": 0.3}),
    ]
    t = score_answers(prompts, teacher, None)
    s = score_answers(prompts, loop, teacher)
    assert t["syntax_valid"] == 1.0 and s["syntax_valid"] == 0.0
    assert t["degenerate"] == 0.0 and s["degenerate"] == 1.0
    assert s["repetition"] > 0.5 and t["repetition"] == 0.0
    assert s["chrf_teacher"] < 50 and t["length_ratio"] == 1.0
    assert s["length_ratio"] == (45 + 31) / (17 + 10)
    assert t["chrf_reference"] > s["chrf_reference"]
    assert abs(s["confidence"] - 0.25) < 1e-9


def test_chrf_is_sacrebleus_sentence_chrf():
    assert chrf("same text", "same text") == 100.0
    assert 0.0 <= chrf("abc", "xyz") < 10.0
