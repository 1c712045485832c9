"""Speed columns: several models timed with their runs interleaved (``serving_speeds``)."""

import numpy as np

from distill.eval.config import SpeedConfig
from distill.eval.speed import serving_speeds, speed_rounds


class _Engine:
    """An engine double: every call is logged; decode takes ``seconds`` (fails when None)."""

    def __init__(self, name: str, log: list[str], seconds: float | None) -> None:
        self.name, self.log, self.seconds = name, log, seconds

    def logits(self, ids: np.ndarray) -> None:
        self.log.append(f"{self.name}:prefill")

    def decode_seconds(self, ids: np.ndarray, new_tokens: int) -> float:
        self.log.append(f"{self.name}:decode{len(ids)}")
        if self.seconds is None:
            raise RuntimeError("cannot decode this artifact")
        return self.seconds


class _Model:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine


def test_runs_are_interleaved_and_a_failing_model_says_why():
    log: list[str] = []
    cfg = SpeedConfig(prompt_tokens=8, new_tokens=5, batch_sizes=[1, 2], repeats=3)
    models = {
        "teacher_int4": _Model(_Engine("t", log, 0.5)),
        "broken": _Model(_Engine("x", log, None)),
        "int4_cpu": _Model(_Engine("s", log, 0.25)),
    }
    rounds: list[str] = []
    prompts = np.zeros((2, 8), dtype=np.int64)
    out = serving_speeds(models, prompts, cfg, rounds.append)

    assert list(out) == list(models)
    assert out["teacher_int4"]["decode_b1_tps"] == 4 / 0.5
    assert out["int4_cpu"]["decode_b2_tps"] == 2 * 4 / 0.25
    assert out["broken"] == {"speed_error": "RuntimeError: cannot decode this artifact"}
    decodes = [e for e in log if "decode1" in e]
    # each repeat times every model once, in turn: t s t s t s, not t t t s s s
    assert decodes == ["t:decode1", "x:decode1", "s:decode1", "t:decode1", "s:decode1"] + [
        "t:decode1",
        "s:decode1",
    ]
    assert len(rounds) == speed_rounds(cfg) == 9
