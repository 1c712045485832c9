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
# Tiny models gain nothing from a second intra-op thread, and on a busy 2-core box the test
# process's spinning OpenMP threads starve the Ray workers it waits on. Ray workers inherit
# this; Ray Train workers still set their own thread count from distill.cpus_per_worker.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train's controller polls its workers every 2 s by default, and a run waits for those polls
# to start, notice the end and shut down: ~5 s of every tiny training run. Every Ray process the
# tests start (ray.init here, `distill run` subprocesses, `ray start` nodes) inherits this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# the Serve tests run as `distill serve` does (Ray Serve's high-throughput mode); the first
# test to start Ray passes it to every Ray process
from distill.serve.config import apply_serve_env  # noqa: E402

apply_serve_env()


def pytest_addoption(parser):
    parser.addoption(
        "--skip-cluster",
        action="store_true",
        help="skip tests marked `cluster` (the two-node Ray cluster test, ~4 min; also "
        "DISTILL_SKIP_CLUSTER=1). `make test` and .ci/run run them",
    )


def pytest_collection_modifyitems(config, items):
    if not (config.getoption("--skip-cluster") or os.environ.get("DISTILL_SKIP_CLUSTER") == "1"):
        return
    skip = pytest.mark.skip(reason="two-node cluster test skipped (--skip-cluster)")
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


@pytest.fixture(scope="session")
def tiny_gptq(tmp_path_factory, tiny_gqa, tiny_rows) -> Path:
    """GPTQ int4 (group 32) checkpoint of ``tiny_gqa``, calibrated on ``tiny_rows[:12]``.

    The first quantize on a fresh machine JIT-compiles GPT-QModel's C++ packing op (~1.5 min,
    cached in ~/.cache/gptqmodel): give tests using it a generous timeout.
    """
    from distill.quant.config import QuantizeConfig
    from distill.quant.gptq import quantize

    cfg = QuantizeConfig(group_size=32, calib_rows=8, calib_seq_len=64, device="cpu")
    out = tmp_path_factory.mktemp("quant") / "student-int4"
    return quantize(tiny_gqa.path, cfg, tiny_rows[:12], out)


@pytest.fixture(scope="session")
def ray_local():
    """One local 2-CPU Ray for every test that needs one, started at its first use and left
    running for the session (a test that starts its own Ray for Serve reuses it). Cluster tests
    start their nodes in subprocesses instead."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


@pytest.fixture
def stage_ctx(tmp_path, tiny_gqa, tiny_rows):
    """Factory for a ``StageContext`` on the tiny GQA teacher with a local SQLite MLflow.

    ``ctx = stage_ctx(stages=["prune"], prune={...})`` returns a context whose tracker is an
    open stage run (closed at teardown); ``ctx.artifacts`` starts with ``teacher`` only.
    """
    from contextlib import ExitStack

    from distill.data.packed import PackedCorpus, write_rows
    from distill.lineage.tracker import Tracker
    from distill.pipeline import PipelineConfig
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


def train_code_lm(base: Path, out: Path, steps: int = 120, seed: int = 0) -> Path:
    """The first 2 blocks of ``base`` trained for ``steps`` AdamW steps on 12 stdlib modules (not
    the ones in ``tiny_rows``): a tiny model with a real held-out perplexity that is sure how a
    line of code goes on and unsure about prose. About 10 s on 2 cores (one torch thread)."""
    import torch

    from distill.data.corpus import stdlib_files
    from distill.data.packing import pack
    from distill.models.files import copy_tokenizer_files
    from distill.models.loader import load_causal_lm, load_tokenizer

    tok = load_tokenizer(base)
    files = [f for f in stdlib_files() if "pydoc_data" not in f.parts][100:112]
    docs = [
        tok(f.read_text(errors="replace"), add_special_tokens=False)["input_ids"] for f in files
    ]
    rows = pack(docs, 64, tok.eos_token_id, max_rows=2000)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = load_causal_lm(base)
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[:2])
    model.config.num_hidden_layers = 2
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:2]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from more; avoids oversubscription
    try:
        for _ in range(steps):
            x = torch.as_tensor(rows[rng.integers(0, len(rows), 16)], dtype=torch.long)
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(out)
    copy_tokenizer_files(base, out)
    return out


@pytest.fixture(scope="session")
def code_lm(cache_dir, tiny_gqa) -> Path:
    """Checkpoint dir of the tiny GQA Llama trained briefly on stdlib code (``train_code_lm``)."""
    out = cache_dir / "code-lm"
    if not (out / "config.json").exists():
        train_code_lm(tiny_gqa.path, out)
    return out


@pytest.fixture
def one_torch_thread():
    """Tiny models run no faster on 2 threads, and far slower when the cores are busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``(workdir, mlflow run id, console text)`` of one ``distill run smoke.yaml`` (a CLI
    subprocess, quiet console) shared by the session: the e2e tests read its outputs, the
    quickstart notebook reruns it from a copy (every stage cached). Asserts on the way that the
    console carries distill's lines only, with a progress line for the distill stage, and that
    third-party output went to ``logs/distill.log``."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    workdir = tmp_path_factory.mktemp("smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", "pipelines/configs/smoke.yaml"]
        + ["--workdir", str(workdir)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = re.search(r"mlflow run: (\w+)", proc.stdout).group(1)
    assert proc.stderr == "", proc.stderr[-2000:]
    table = set("┏┃┡│└")
    ours = ("[distill]", "report: ", "mlflow run: ", "lineage: ")
    for line in proc.stdout.splitlines():
        text = line.strip()
        assert not text or text.startswith(ours) or text[0] in table or "distill results" in text
    # not a terminal: each progress bar ends with one plain line
    assert re.search(r"^\[distill\]   distill: \d+/\d+ steps", proc.stdout, re.M), proc.stdout
    assert (
        "Quantizing" not in proc.stdout
        and "Quantizing" in (workdir / "logs/distill.log").read_text()
    )
    return workdir, run_id, proc.stdout


@pytest.fixture
def smoke_copy(smoke_run, tmp_path) -> Path:
    """A private copy of the session's smoke workdir (Ray's logs and checkpoints left out): a
    rerun in it finds every finished stage (the stage records point at the shared outputs)."""
    import shutil

    dest = tmp_path / "smoke-copy"
    shutil.copytree(smoke_run[0], dest, ignore=shutil.ignore_patterns("ray", "ray_results"))
    return dest
