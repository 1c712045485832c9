"""Stage ``teacher_int4``: the teacher quantized by the same path as the student (GPTQ with the
pipeline's ``quantize`` settings → the CPU int4 engine), the baseline every run is measured
against: what a user would ship without pruning or KD. ``evaluate`` scores it beside the
student and the release gate treats it as a candidate::

    distill run pipelines/configs/smollm2.yaml     # runs it before evaluate (teacher_int4.enabled)

Outputs: ``teacher_int4`` (the engine export, or the GPTQ checkpoint without an engine) and,
with an engine, ``teacher_int4_gptq`` (the GPTQ checkpoint it came from); with
``teacher_int4.gptq_engine``, ``teacher_int4_gptq_cpu``: that GPTQ checkpoint exported like the
student's ``int4_cpu``, the baseline in the student's own format. Quantization-aware recovery
(``quantize.recover``) is not applied to the teacher.
"""

from __future__ import annotations

from pathlib import Path

from distill.models.hashing import dir_sha256, weights_sha256
from distill.quant.checkpoint import (
    Outputs,
    calibration_rows,
    export_engine,
    heldout_quality,
    num_layers,
    peak_rss_mb,
    quantize_checkpoint,
)
from distill.quant.config import RecoverConfig, TeacherInt4Config
from distill.quant.gptq import validate
from distill.runtime.ort_genai import require_ort_genai
from distill.stages import StageContext, StageResult

OUTPUT_NAME = "teacher-int4"
ENGINE_OUTPUT_NAME = "teacher-int4-cpu"
GPTQ_ENGINE_OUTPUT_NAME = "teacher-int4-gptq-cpu"


def run(ctx: StageContext, cfg: TeacherInt4Config) -> StageResult:
    assert cfg.quantize is not None  # filled in from the pipeline's quantize section
    qcfg = cfg.quantize.model_copy(update={"recover": RecoverConfig()})
    teacher = ctx.teacher.path
    validate(teacher, qcfg)
    second = cfg.gptq_engine is not None and cfg.gptq_engine.kind != "none"
    if qcfg.engine.kind != "none" or second:
        require_ort_genai()
    rows = calibration_rows(ctx.corpus, qcfg, ctx.teacher.path)
    ctx.tracker.log_params(qcfg.model_dump(), prefix="quantize.")
    ctx.tracker.log_params({"source": "teacher", "calib_tokens": int(rows.size)})
    ctx.tracker.record_input("teacher", teacher, ctx.teacher.weights_sha256)
    ctx.tracker.set_tags({"input.calibration.uri": str(ctx.corpus.train_path)})

    where = Outputs(ctx.output_dir(OUTPUT_NAME), ctx.output_dir(ENGINE_OUTPUT_NAME))
    layers = num_layers(teacher)
    with ctx.progress.task("teacher int4", layers, "layers") as bar:

        def bar_layer(i: int) -> None:
            bar.update(i + 1, phase="GPTQ" if i + 1 < layers else "export")

        made, metrics = quantize_checkpoint(
            teacher, qcfg, rows, where, ctx.corpus.heldout(), on_layer=bar_layer
        )
        bar.update(phase="held-out eval")
        metrics.update(heldout_quality(ctx.corpus.heldout(qcfg.eval_rows), qcfg, teacher, made))
    gptq_sha = weights_sha256(made["int4"])
    outputs = _record_outputs(ctx, made, gptq_sha)
    if second:
        outputs["teacher_int4_gptq_cpu"] = _gptq_engine_export(ctx, cfg, made["int4"], metrics)
    metrics["peak_rss_mb"] = peak_rss_mb()
    ctx.tracker.log_metrics(metrics)
    summary = {
        "source": "teacher",
        "method": qcfg.method,
        "bits": qcfg.bits,
        "group_size": qcfg.group_size,
        "engine": qcfg.engine.kind,
        "gptq_engine": cfg.gptq_engine.kind if cfg.gptq_engine else "none",
        "gptq_sha256": gptq_sha,
        **{k: round(v, 4) for k, v in metrics.items()},
    }
    ctx.tracker.log_dict(summary, "teacher_int4_summary.json")
    return StageResult(outputs=outputs, metrics=metrics, summary=summary)


def _record_outputs(ctx: StageContext, made: dict[str, Path], gptq_sha: str) -> dict[str, Path]:
    """The served form is ``teacher_int4`` (the engine export, its GPTQ source beside it; the
    GPTQ checkpoint without an engine)."""
    if "int4_cpu" not in made:
        ctx.tracker.record_output("teacher_int4", made["int4"], gptq_sha)
        return {"teacher_int4": made["int4"]}
    ctx.tracker.record_output("teacher_int4_gptq", made["int4"], gptq_sha)
    ctx.tracker.record_output("teacher_int4", made["int4_cpu"], dir_sha256(made["int4_cpu"]))
    return {"teacher_int4": made["int4_cpu"], "teacher_int4_gptq": made["int4"]}


def _gptq_engine_export(
    ctx: StageContext, cfg: TeacherInt4Config, gptq: Path, metrics: dict[str, float]
) -> Path:
    """The teacher's GPTQ checkpoint exported like the student's ``int4_cpu``."""
    assert cfg.gptq_engine is not None and cfg.quantize is not None
    out = ctx.output_dir(GPTQ_ENGINE_OUTPUT_NAME)
    made = export_engine(gptq, out, cfg.gptq_engine, cfg.quantize.group_size)
    metrics.update({f"gptq_{k}": v for k, v in made.items()})
    ctx.tracker.record_output("teacher_int4_gptq_cpu", out, dir_sha256(out))
    return out
