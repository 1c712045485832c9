"""Quantization-aware distillation (``quantize.recover``): GPTQ int4 → recovered int4.

The GPTQ checkpoint is trained against the teacher's soft-label store through the same Ray Train +
DeepSpeed loop as the ``distill`` stage, with ``LoopSpec.fake_quant``: the loop loads it with
:func:`distill.train.fakequant.load_fake_quant` (int4 grid, straight-through estimator) and
exports it repacked as a GPTQ checkpoint. Any GPTQ checkpoint of a model the store's tokenizer
fits (the student, or the teacher itself) recovers the same way::

    distill run pipelines/configs/smollm2.yaml --set quantize.recover.steps=20
    python benchmarks/quantize.py --run runs/smollm2 --model teacher --recover-steps 24
"""

from __future__ import annotations

from pathlib import Path

from distill.config.base import DistillError
from distill.models.hashing import file_sha256, weights_sha256
from distill.quant.config import QuantizeConfig
from distill.raycluster import ensure_ray
from distill.stages import StageContext
from distill.train.config import DistillConfig
from distill.train.inputs import check_inputs, manifest_value, run_name
from distill.train.launch import launch
from distill.train.loop import LoopSpec

OUTPUT_NAME = "student-int4-recovered"


def distill_config(cfg: QuantizeConfig):
    """The ``distill`` loop's settings for the recovery run: offline KD on the store, or online
    KD from the fp model (``recover.target: fp``)."""

    r = cfg.recover
    return DistillConfig(
        mode="offline" if r.target == "soft_labels" else "online",
        loss=r.loss,
        zero_stage=r.zero_stage,
        num_workers=r.num_workers,
        cpus_per_worker=r.cpus_per_worker,
        batch_size=r.batch_size,
        lr=r.lr,
        warmup_steps=r.warmup_steps,
        max_steps=r.steps,
        eval_rows=r.eval_rows,
        freeze_embeddings=r.freeze_embeddings,
    )


def check_store(ctx: StageContext, cfg: QuantizeConfig | None = None) -> Path | None:
    """The soft-label store recovery trains against; refused (naming the setting) when absent.
    None when ``cfg.recover.target`` is ``fp`` (no store needed)."""
    if cfg is not None and cfg.recover.target == "fp":
        return None
    store = ctx.artifacts.get("soft_labels")
    if store is None or not (Path(store) / "manifest.json").exists():
        where = "there is none" if store is None else f"{store} holds no manifest.json"
        raise DistillError(
            f"quantize.recover.steps > 0 trains against the teacher's soft-label store, but "
            f"{where}: add the soft_labels stage before quantize, set quantize.recover.target: "
            "fp (train against the fp model instead), or set quantize.recover.steps: 0"
        )
    return Path(store)


def recover(
    ctx: StageContext,
    cfg: QuantizeConfig,
    gptq_dir: Path,
    output_name: str = OUTPUT_NAME,
    fp_dir: Path | None = None,
) -> tuple[Path, dict]:
    """Train ``gptq_dir`` on its int4 grid into ``<workdir>/<output_name>``; returns the repacked
    checkpoint and the loop's final metrics. ``fp_dir``: the model GPTQ quantized (the target of
    ``recover.target: fp``; default: the context's latest model, what the stage quantizes)."""

    store_dir = check_store(ctx, cfg)
    dcfg = distill_config(cfg)
    online = cfg.recover.target == "fp"
    target = Path(fp_dir or ctx.latest_model()[1]) if online else Path(ctx.teacher.path)
    store = check_inputs(dcfg, target, Path(gptq_dir), store_dir, ctx.teacher)
    seq_len = ctx.corpus.seq_len
    if store is not None:
        seq_len = int(manifest_value(store.manifest, "seq_len") or seq_len)
    out = ctx.output_dir(output_name)
    spec = LoopSpec(
        cfg=dcfg,
        student_path=str(gptq_dir),
        teacher_path=str(target) if online else None,
        train_path=str(ctx.corpus.train_path) if online else None,
        store_path=str(store_dir) if store_dir else None,
        heldout_path=str(ctx.corpus.heldout_path) if ctx.corpus.heldout_rows else None,
        seq_len=seq_len,
        total_steps=dcfg.total_steps(seq_len),
        out_dir=str(out),
        tracking=ctx.tracker.client_info(),
        fake_quant=True,
    )
    if store_dir is not None:
        ctx.tracker.record_input("soft_labels", store_dir)
    else:
        ctx.tracker.record_input("recover_target", target, weights_sha256(target))
    ensure_ray(ctx.config.ray)
    name = run_name(
        dcfg,
        weights_sha256(Path(gptq_dir)),
        weights_sha256(target) if online else ctx.teacher.weights_sha256,
        file_sha256(store_dir / "manifest.json") if store_dir else ctx.corpus.fingerprint,
        spec.model_dump_json(exclude={"tracking", "out_dir"}),
    ).replace("distill-", "recover-")
    final = launch(spec, name, ctx.workdir / "ray_results")
    keep = ("train/loss", "eval/loss", "eval/ppl", "tokens_per_s", "tokens")
    metrics = {f"recover.{k.replace('/', '_')}": float(final[k]) for k in keep if k in final}
    return out, metrics
