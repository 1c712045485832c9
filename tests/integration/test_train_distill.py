"""Ray Train + DeepSpeed distillation on tiny models: 2 workers, ZeRO-2 / ZeRO-3, fault + resume.

Each run takes ~20-30 s on 2 cores (tiny Llamas, seq_len 32, a few steps).
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.console import Progress
from distill.train.config import DistillConfig
from distill.train.launch import launch
from distill.train.loop import FAIL_ENV, LoopSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_gqa, cache_dir):
    """A teacher with sharp distributions (final norm × 8) and a 2-layer random student."""
    from distill.models.config import TinySource
    from distill.models.files import copy_tokenizer_files
    from distill.models.loader import load_causal_lm, resolve_source

    teacher_dir = tmp_path_factory.mktemp("sharp-teacher")
    t = load_causal_lm(tiny_gqa.path)
    with torch.no_grad():
        t.model.norm.weight.mul_(8.0)
    t.save_pretrained(teacher_dir)
    copy_tokenizer_files(tiny_gqa.path, teacher_dir)
    student = resolve_source(TinySource(num_hidden_layers=2, seed=1), cache_dir)
    return Path(teacher_dir), student.path


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_rows):
    from distill.data.packed import write_rows

    d = tmp_path_factory.mktemp("rows32")
    rows = np.concatenate([tiny_rows[:, :32], tiny_rows[:, 32:]])  # 48 rows of 32
    write_rows(d / "train.parquet", rows[:40])
    write_rows(d / "heldout.parquet", rows[40:])
    return d, rows


def make_store(
    root: Path, teacher_dir: Path, rows: np.ndarray, k: int = 16, encoding: str = "topk"
) -> Path:
    """A soft-label store written with distill.labels' in-process writer (same format)."""
    from distill.labels.local import write_local_store

    write_local_store(
        root, teacher_dir, rows, k, batch_size=len(rows), fingerprint="test", encoding=encoding
    )
    return root


def _spec(models, data, out: Path, **kw) -> LoopSpec:
    extra = {k: kw.pop(k) for k in ("store_path",) if k in kw}
    base = {
        "mode": "online",
        "num_workers": 2,
        "zero_stage": 2,
        "batch_size": 2,
        "max_steps": 8,
        "lr": 3e-3,
        "warmup_steps": 2,
        "checkpoint_every": 4,
        "eval_every": 4,
        "eval_rows": 8,
        "seed": 0,
    }
    cfg = DistillConfig.model_validate({**base, **kw})
    return LoopSpec(
        cfg=cfg,
        student_path=str(models[1]),
        teacher_path=str(models[0]),
        train_path=str(data[0] / "train.parquet"),
        heldout_path=str(data[0] / "heldout.parquet"),
        seq_len=32,
        total_steps=cfg.total_steps(32),
        out_dir=str(out),
        **extra,
    )


# Online runs also train the feature (projection) and attention-transfer losses.
LAYER_LOSSES = {
    "feature": {"weight": 0.1, "pairs": [[2, 1], [1, 0]], "kind": "mse"},
    "attention": {"weight": 0.1, "pairs": [[3, 1]], "kind": "kl"},
}


def _kd_of(student_dir: Path, teacher_dir: Path, rows: np.ndarray) -> float:
    from distill.losses import kd_full
    from distill.models.loader import load_causal_lm

    ids = torch.as_tensor(rows[:40], dtype=torch.long)
    with torch.no_grad():
        s = load_causal_lm(student_dir)(input_ids=ids).logits
        t = load_causal_lm(teacher_dir)(input_ids=ids).logits
    return float(kd_full(s, t, None, "forward_kl"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ray_local, models, data):
    root = tmp_path_factory.mktemp("run-a")
    metrics = launch(_spec(models, data, root / "student", **LAYER_LOSSES), "kd-a", root / "ray")
    return root, metrics


@pytest.mark.timeout(180)
def test_zero2_two_workers_lowers_kd(uninterrupted, models, data):
    root, metrics = uninterrupted
    assert metrics["step"] == 8 and metrics["resumed_from_step"] == 0
    assert metrics["rows_consumed"] == 8 * 2 * 2
    assert np.isfinite(metrics["eval/ppl"]) and metrics["tokens_per_s"] > 0
    assert metrics["train/feature"] > 0 and metrics["train/attention"] > 0
    before = _kd_of(models[1], models[0], data[1])
    after = _kd_of(root / "student", models[0], data[1])
    assert after < 0.9 * before, (before, after)
    # plain HF dir with the tokenizer copied from the student source
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (root / "student").iterdir()
    }


@pytest.mark.timeout(240)
def test_worker_failure_resumes_from_checkpoint(tmp_path, uninterrupted, models, data):
    from distill.models.loader import load_causal_lm

    marker = tmp_path / "fail"
    spec = _spec(models, data, tmp_path / "student", max_failures=1, **LAYER_LOSSES)
    metrics = launch(spec, "kd-b", tmp_path / "ray", env={FAIL_ENV: f"6:{marker}"})
    assert Path(f"{marker}.rank0").exists() and Path(f"{marker}.rank1").exists()
    assert metrics["step"] == uninterrupted[1]["step"] == 8
    assert metrics["resumed_from_step"] == 4  # the step-4 checkpoint, not step 0
    assert metrics["rows_consumed"] == uninterrupted[1]["rows_consumed"]
    a = load_causal_lm(uninterrupted[0] / "student").state_dict()
    b = load_causal_lm(tmp_path / "student").state_dict()
    for k in a:  # same data positions, optimizer and LR state: the same weights
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


@pytest.mark.timeout(180)
def test_offline_topk_store_two_workers_lowers_kd(tmp_path, ray_local, models, data):
    store = make_store(tmp_path / "labels", models[0], data[1][:40], k=16)
    spec = _spec(
        models, data, tmp_path / "student", mode="offline", store_path=str(store), zero_stage=1
    )
    metrics = launch(spec, "kd-offline", tmp_path / "ray")
    assert metrics["step"] == 8 and metrics["train/kd"] > 0
    before = _kd_of(models[1], models[0], data[1])
    after = _kd_of(tmp_path / "student", models[0], data[1])
    assert after < 0.9 * before, (before, after)


@pytest.mark.timeout(180)
def test_offline_sampled_store_one_worker_zero0_lowers_kd(tmp_path, ray_local, models, data):
    """The CPU default layout (1 worker, 2 threads, no ZeRO) on a sampled store."""
    store = make_store(tmp_path / "labels", models[0], data[1][:40], k=32, encoding="sampled")
    spec = _spec(
        models,
        data,
        tmp_path / "student",
        mode="offline",
        store_path=str(store),
        zero_stage=0,
        num_workers=1,
        cpus_per_worker=2,
        batch_size=4,
        loss_chunk=16,
    )
    metrics = launch(spec, "kd-sampled", tmp_path / "ray")
    assert metrics["step"] == 8 and metrics["train/kd"] > 0
    before = _kd_of(models[1], models[0], data[1])
    after = _kd_of(tmp_path / "student", models[0], data[1])
    assert after < 0.9 * before, (before, after)


def test_store_from_another_teacher_is_refused(tmp_path, models, data, tiny_gqa, tiny_mha):
    from distill.config.base import DistillError
    from distill.train.inputs import check_inputs

    store = make_store(tmp_path / "labels", tiny_mha.path, data[1][:4], k=4)
    cfg = DistillConfig(mode="offline")
    with pytest.raises(DistillError, match="teacher weights sha256"):
        check_inputs(cfg, tiny_gqa.path, models[1], store, tiny_gqa)
    assert check_inputs(cfg, tiny_mha.path, models[1], store, tiny_mha).num_rows == 4


@pytest.mark.timeout(180)
def test_stage_offline_zero3_writes_loadable_student(stage_ctx, ray_local, models):
    from mlflow import MlflowClient

    from distill.models.loader import load_causal_lm
    from distill.train.stage import run

    ctx = stage_ctx(["distill"])
    ctx.artifacts["pruned"] = models[1]
    ctx.artifacts["soft_labels"] = make_store(
        ctx.workdir / "labels", ctx.teacher.path, ctx.corpus.train(), k=8
    )
    cfg = DistillConfig(zero_stage=3, batch_size=2, max_steps=3, lr=1e-3, loss={"alpha": 0.5})
    ctx.progress = Progress(console := io.StringIO())  # not a terminal: plain lines
    result = run(ctx, cfg)
    # the driver read the rank-0 worker's step, loss and speed from MLflow
    assert re.search(r"distill: 3/3 steps, loss [\d.]+, tok_s [\d.e+]+", console.getvalue())
    out = result.outputs["student"]
    assert out == ctx.workdir / "student"
    model = load_causal_lm(out)
    assert model.config.num_hidden_layers == 2
    assert result.metrics["steps"] == 3 and result.metrics["heldout_ppl"] > 1
    assert result.metrics["ce_loss"] > 0 and result.metrics["kd_loss"] > 0
    hist = MlflowClient(ctx.tracker.tracking_uri).get_metric_history(ctx.tracker.run_id, "train/kd")
    assert sorted(m.step for m in hist) == [1, 2, 3]
    ids = torch.as_tensor(ctx.corpus.heldout()[:1], dtype=torch.long)
    assert torch.isfinite(model(input_ids=ids).logits).all()
    # the export is exactly the trained fp32 weights: DeepSpeed's own consolidation of the last
    # checkpoint (all ranks' ZeRO-3 partitions) gives the same tensors, and they moved
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    (ckpt,) = (ctx.workdir / "ray_results").glob("*/checkpoint-step0000003")
    trained = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="state")
    exported = model.state_dict()
    initial = load_causal_lm(models[1]).state_dict()
    for k, v in trained.items():
        name = k.removeprefix("student.")
        assert exported[name].dtype == torch.float32
        assert torch.equal(exported[name], v.float()), name
    assert any(not torch.equal(exported[k], initial[k]) for k in initial)
    shutil.rmtree(ctx.workdir / "ray_results", ignore_errors=True)


@pytest.mark.timeout(240)
def test_changed_store_retrains_instead_of_resuming(stage_ctx, ray_local, models):
    """Regression: a store rebuilt with another k in the same workdir used to hit the finished
    checkpoint of the old run (same Ray run name), skip training and re-register old weights."""
    import shutil as sh

    from distill.models.hashing import weights_sha256
    from distill.train.stage import run

    ctx = stage_ctx(["distill"])
    ctx.artifacts["pruned"] = models[1]
    labels = ctx.workdir / "labels"
    cfg = DistillConfig(zero_stage=0, num_workers=1, batch_size=4, max_steps=2, lr=1e-3)
    ctx.artifacts["soft_labels"] = make_store(labels, ctx.teacher.path, ctx.corpus.train(), k=8)
    first = run(ctx, cfg)
    sha_first = weights_sha256(first.outputs["student"])
    sh.rmtree(labels)
    make_store(labels, ctx.teacher.path, ctx.corpus.train(), k=2)
    second = run(ctx, cfg)
    assert second.summary["ray_run"] != first.summary["ray_run"]
    assert second.metrics["steps"] == 2
    assert weights_sha256(second.outputs["student"]) != sha_first
    again = run(ctx, cfg)  # unchanged inputs: the same run, resumed from its final checkpoint
    assert again.summary["ray_run"] == second.summary["ray_run"]
    shutil.rmtree(ctx.workdir / "ray_results", ignore_errors=True)
