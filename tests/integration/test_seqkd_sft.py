"""seq-KD stages on the tiny teacher: generate on Ray, sft's input checks and filters, and the sft
training mode of the distill loop; the whole generate → sft → evaluate run, with the sft stage's
training and lineage, is tests/e2e/test_seqkd_pipeline.py."""

from __future__ import annotations

import io
import json

import pytest

from distill.config.base import DistillError
from distill.console import Progress
from distill.seqkd.config import GenerateConfig, SFTConfig

GEN = {
    "prompts": {"source": "docstrings", "max_prompts": 10, "heldout_fraction": 0.3},
    "decoding": {"n": 2, "temperature": 1.0, "max_new_tokens": 12, "seed": 0},
    "teacher": {"kind": "local", "batch_size": 5, "torch_threads": 1},
}
SFT = {
    "steps": 4,
    "seq_len": 192,  # docstring prompts alone are ~100 tiny-tokenizer tokens
    "batch_size": 2,
    "lr": 1e-3,
    "eval_rows": 4,
    # a random tiny teacher never stops and repeats itself: keep its output for the mechanics
    "filters": {
        "quality": {"drop_truncated": False},
        "repetition": {"enabled": False},
        "syntax": {"enabled": False},
    },
    "contamination": {"threshold": 1.0},
}


@pytest.mark.timeout(300)
def test_generate_then_sft_filters_refuse_an_empty_training_set(ray_local, stage_ctx):
    """generate on a Ray actor pool, then sft's filters: nothing kept is a clear error naming
    the knob, before any training. The sft stage's training run, its filter accounting and its
    lineage are asserted on the CLI run in tests/e2e/test_seqkd_pipeline.py."""
    from distill.seqkd import generate_stage, sft_stage

    ctx = stage_ctx(["generate", "sft"], generate=GEN, sft=SFT)
    ctx.progress = Progress(console := io.StringIO())  # not a terminal: plain lines
    gen = generate_stage.run(ctx, GenerateConfig.model_validate(GEN))
    assert "[distill]   generate: 20/20 completions, tok_s" in console.getvalue()
    rows = gen.metrics["completions"]
    assert rows == 2 * gen.metrics["prompts"] and gen.metrics["prompts"] == 10
    assert gen.metrics["tokens_per_s"] > 0
    ctx.artifacts.update(gen.outputs)
    strict = {**SFT, "filters": {"length": {"min": 10_000}}}
    with pytest.raises(DistillError, match="min_examples"):
        sft_stage.run(ctx, SFTConfig.model_validate(strict))
    assert not (ctx.workdir / "student").exists()


@pytest.mark.timeout(60)
def test_sft_without_generations_is_refused(stage_ctx):
    from distill.seqkd import sft_stage

    ctx = stage_ctx(["sft"])
    with pytest.raises(DistillError, match="list `generate` before `sft`"):
        sft_stage.run(ctx, SFTConfig())


@pytest.mark.timeout(60)
def test_half_written_store_is_not_read(tmp_path):
    from distill.seqkd.store import GenerationWriter, read_generations

    w = GenerationWriter(tmp_path / "g")
    row = {c: ["x"] for c in ("key", "id", "prompt", "messages_json", "kind", "split")}
    row.update(completion=["y"], mean_logprob=[float("nan")], n_tokens=[1], finish_reason=["stop"])
    row["sample"] = [0]
    w.write(row)
    with pytest.raises(DistillError, match="no manifest.json"):
        read_generations(tmp_path / "g")
    w.finish({"teacher": {}})
    assert read_generations(tmp_path / "g")[0]["mean_logprob"] is None
    shard = tmp_path / "g" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(DistillError, match="sha256"):
        read_generations(tmp_path / "g")
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["rows"] == 1


@pytest.mark.timeout(300)
def test_sft_mode_lowers_completion_loss_through_ray_train(
    ray_local, tmp_path, tiny_rows, cache_dir
):
    """distill.train in mode sft: 2 DeepSpeed workers, CE on labelled tokens only, loss drops."""
    import numpy as np

    from distill.models.config import TinySource
    from distill.models.loader import load_causal_lm, resolve_source
    from distill.seqkd.completion_loss import completion_loss
    from distill.seqkd.sft_data import write_sft_rows
    from distill.train.config import DistillConfig
    from distill.train.launch import launch
    from distill.train.loop import LoopSpec

    student = resolve_source(TinySource(num_hidden_layers=2, seed=1), cache_dir).path
    ids = tiny_rows[:8, :32].copy()
    am = np.ones_like(ids)
    am[::2, 24:] = 0  # padded rows
    labels = ids.copy()
    labels[:, :12] = -100  # prompt
    labels[am == 0] = -100
    ids[am == 0] = 0
    rows = {"input_ids": ids, "attention_mask": am, "labels": labels}
    write_sft_rows(tmp_path / "sft.parquet", rows)
    cfg = DistillConfig(mode="sft", num_workers=2, batch_size=4, lr=3e-3, max_steps=6)
    spec = LoopSpec(
        cfg=cfg,
        student_path=str(student),
        sft_path=str(tmp_path / "sft.parquet"),
        seq_len=32,
        total_steps=6,
        out_dir=str(tmp_path / "out"),
    )
    before = completion_loss(load_causal_lm(student), rows)
    final = launch(spec, "sft-test", tmp_path / "ray")
    after = completion_loss(load_causal_lm(tmp_path / "out"), rows)
    assert final["step"] == 6 and final["train/kd"] == 0
    assert after < before - 0.1, (before, after)
    # the loop's reported CE is the completion-only CE (not the all-token one)
    assert abs(final["train/ce"] - final["train/loss"]) < 1e-6
