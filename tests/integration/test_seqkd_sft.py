"""generate → sft on the tiny teacher: filters reported, student checkpoint written and loadable."""

from __future__ import annotations

import io
import json
import re
import time

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
def test_generate_then_sft_writes_a_student(ray_local, stage_ctx):
    from mlflow import MlflowClient

    from distill.models.loader import load_causal_lm
    from distill.seqkd import generate_stage, sft_stage

    ctx = stage_ctx(["generate", "sft"], generate=GEN, sft=SFT)
    ctx.progress = Progress(console := io.StringIO())  # not a terminal: plain lines
    gen = generate_stage.run(ctx, GenerateConfig.model_validate(GEN))
    assert "[distill]   generate: 20/20 completions, tok_s" in console.getvalue()
    rows = gen.metrics["completions"]
    assert rows == 2 * gen.metrics["prompts"] and gen.metrics["prompts"] == 10
    assert gen.metrics["tokens_per_s"] > 0
    ctx.artifacts.update(gen.outputs)
    t0 = time.perf_counter()
    res = sft_stage.run(ctx, SFTConfig.model_validate(SFT))
    assert re.search(r"\[distill\]   sft: (\d+)/\1 steps, loss [\d.]+, tok_s", console.getvalue())
    print(f"sft stage {time.perf_counter() - t0:.1f}s")
    student = res.outputs["student"]
    assert (student / "config.json").exists() and (student / "tokenizer.json").exists()
    load_causal_lm(student)  # loads alone
    from distill.seqkd.sft_data import read_sft_rows

    train = read_sft_rows(ctx.workdir / "sft_data" / "train.parquet")
    assert len(train["input_ids"]) == res.metrics["data.rows"]
    m = res.metrics
    assert m["filter.total.in"] == m["filter.quality.in"] <= rows
    assert "filter.syntax.in" not in m  # disabled filters are not reported
    for name in ("quality", "length", "logprob", "dedup"):
        assert m[f"filter.{name}.kept"] + m[f"filter.{name}.dropped"] == m[f"filter.{name}.in"]
    assert m["steps"] == 4 and m["data.label_tokens"] > 0
    assert "contamination.max_rate" in m
    run = MlflowClient(ctx.tracker.tracking_uri).get_run(ctx.tracker.run_id)
    assert run.data.tags["trainer"] == "ray_train"
    assert "filter.dedup.kept" in run.data.metrics and "train/loss" in run.data.metrics
    assert run.data.tags["output.student.uri"] == str(student)

    # nothing kept -> a clear error naming the knob
    strict = {**SFT, "filters": {"length": {"min": 10_000}}}
    with pytest.raises(DistillError, match="min_examples"):
        sft_stage.run(ctx, SFTConfig.model_validate(strict))


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
