"""Shared fixtures: tiny Llama checkpoints (MHA and GQA) and packed token rows, built in-process.

Models are cached per test session under a temp dir; nothing touches a model hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser):
    parser.addoption(
        "--skip-cluster",
        action="store_true",
        help="skip tests marked `cluster` (a two-node Ray cluster; also DISTILL_SKIP_CLUSTER=1)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--skip-cluster") or os.environ.get("DISTILL_SKIP_CLUSTER") == "1":
        skip = pytest.mark.skip(reason="--skip-cluster / DISTILL_SKIP_CLUSTER=1")
        for item in items:
            if "cluster" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("distill-cache")
    os.environ["DISTILL_CACHE"] = str(d)
    return d


def _tiny(cache: Path, **kw):
    from distill.models.config import TinySource
    from distill.models.loader import resolve_source

    return resolve_source(TinySource(**kw), cache)


@pytest.fixture(scope="session")
def tiny_gqa(cache_dir):
    """ModelInfo of a 4-layer Llama, hidden 64, 4 q heads / 2 kv heads, vocab 512."""
    return _tiny(cache_dir, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="session")
def tiny_mha(cache_dir):
    """ModelInfo of a 4-layer Llama, hidden 64, 4 heads (MHA), vocab 512."""
    return _tiny(cache_dir, num_attention_heads=4, num_key_value_heads=4)


@pytest.fixture(scope="session")
def tiny_rows(tiny_gqa) -> np.ndarray:
    """``[24, 64]`` int32 packed rows of stdlib text tokenized with the tiny tokenizer."""
    from distill.data.packing import pack
    from distill.models.loader import load_tokenizer
    from distill.models.tiny import default_tokenizer_texts

    tok = load_tokenizer(tiny_gqa.path)
    texts = default_tokenizer_texts(limit=80)[60:80]
    docs = tok(texts, add_special_tokens=False)["input_ids"]
    rows = pack(docs, 64, tok.eos_token_id, max_rows=24)
    assert rows.shape == (24, 64)
    return rows


@pytest.fixture
def stage_ctx(tmp_path, tiny_gqa, tiny_rows):
    """Factory for a ``StageContext`` on the tiny GQA teacher with a local SQLite MLflow.

    ``ctx = stage_ctx(stages=["prune"], prune={...})`` returns a context whose tracker is an
    open stage run (closed at teardown); ``ctx.artifacts`` starts with ``teacher`` only.
    """
    from contextlib import ExitStack

    from distill.config.pipeline import PipelineConfig
    from distill.data.packed import PackedCorpus, write_rows
    from distill.lineage.tracker import Tracker
    from distill.stages import StageContext

    stack = ExitStack()

    def make(stages: list[str], **sections) -> StageContext:
        cfg = PipelineConfig.model_validate(
            {
                "name": "test",
                "workdir": str(tmp_path),
                "teacher": {"kind": "tiny"},
                "stages": stages,
                "data": {"seq_len": 64},
                **sections,
            }
        )
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        write_rows(data / "train.parquet", tiny_rows[:16])
        write_rows(data / "heldout.parquet", tiny_rows[16:])
        corpus = PackedCorpus(data, 64, "test-fingerprint", 16, len(tiny_rows) - 16)
        tracker = Tracker(cfg.tracking, tmp_path)
        stack.enter_context(tracker.pipeline("test"))
        run = stack.enter_context(tracker.stage(stages[0]))
        return StageContext(cfg, tmp_path, tiny_gqa, corpus, run, {"teacher": tiny_gqa.path})

    yield make
    stack.close()
