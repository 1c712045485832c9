"""Stage ``prune``: the teacher cut to a planned shape, as ``<workdir>/pruned/`` (plain HF dir).

Importance comes from ``calib_rows`` train rows; perplexity before/after from the held-out split.
MLflow: the plan (params), params/perplexity before and after (metrics), importance scores
(``importance.json``) and their plot (``importance.png``), input/output URIs and hashes::

    distill run pipelines/configs/smoke.yaml        # stages: [prune, ...]
    distill run pipelines/configs/smollm2.yaml --set prune.policy=combined
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from distill.atomic import atomic_dir
from distill.prune.config import PruneConfig
from distill.prune.planner import Plan, make_plan
from distill.prune.shape import ModelShape
from distill.stages import StageContext, StageResult

# Everything of the source checkpoint except weights and model config: tokenizer, chat
# template, model card / license (the license check of later stages reads them).
_SKIP = {"config.json", "generation_config.json", "model.safetensors.index.json"}


def preflight(cfg: PruneConfig, model_dir: Path) -> Plan:
    """Check the architecture and make the plan from ``config.json`` alone (no weights loaded);
    raises ``DistillError`` with what is allowed when the target cannot be cut from the model."""
    from distill.prune.core import check_architecture

    src_cfg = json.loads((Path(model_dir) / "config.json").read_text())
    check_architecture(src_cfg.get("architectures"))
    if cfg.target_speedup is not None:  # the budget is searched later: check the policy plans
        cfg = cfg.model_copy(update={"target_params": 0.5})
    return make_plan(cfg, ModelShape.from_config(src_cfg))


def copy_side_files(src: Path, dst: Path) -> None:
    """Copy tokenizer files (and card/license) from the source checkpoint."""
    for f in Path(src).iterdir():
        if f.is_file() and f.name not in _SKIP and not f.name.endswith(".safetensors"):
            shutil.copy2(f, dst / f.name)


def save_checkpoint(model, src: Path, out: Path) -> None:
    """``save_pretrained`` + side files into a temp dir, then rename into place."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        copy_side_files(src, tmp)


def run(ctx: StageContext, cfg: PruneConfig) -> StageResult:
    from distill.data.packed import make_calib_loop
    from distill.eval.metrics import evaluate_models
    from distill.models.hashing import weights_sha256
    from distill.models.loader import count_parameters, load_causal_lm
    from distill.prune.core import prune_model
    from distill.prune.plots import importance_figure

    src = Path(
        ctx.artifacts.get("initial_student") or ctx.artifacts.get("teacher", ctx.teacher.path)
    )
    preflight(cfg, src)  # before any work
    search = None
    if cfg.target_speedup is not None:  # measured in the engine the student will be served by
        from distill.prune.speedup import plan_for_speedup

        t0 = time.perf_counter()
        search = plan_for_speedup(cfg, src, ctx.config.quantize.engine)
        search_s = time.perf_counter() - t0
        cfg = cfg.model_copy(update={"target_params": search.target_params})
    plan = preflight(cfg.model_copy(update={"target_speedup": None}), src)
    ctx.tracker.record_input("model", src, weights_sha256(src))
    ctx.tracker.log_params(plan.summary(), prefix="plan.")

    t0 = time.perf_counter()
    with ctx.progress.task("prune", 4, "steps") as bar:
        bar.update(0, phase="held-out eval (before)")
        model = load_causal_lm(src)
        heldout = ctx.corpus.heldout(cfg.eval_rows)
        calib = ctx.corpus.train(cfg.calib_rows)
        params_before = count_parameters(model)
        before = evaluate_models({"m": model}, heldout, cfg.eval_batch_size)["m"]
        bar.update(1, phase="importance + prune")
        result = prune_model(model, cfg, make_calib_loop(calib, cfg.calib_batch_size), plan)
        params_after = count_parameters(model)
        bar.update(2, phase="held-out eval (after)")
        after = evaluate_models({"m": model}, heldout, cfg.eval_batch_size)["m"]
        bar.update(3, phase="save")
        out = ctx.output_dir("pruned")
        save_checkpoint(model, src, out)
        bar.update(4, phase="done")
    sha = weights_sha256(out)
    metrics = {
        "params_before": float(params_before),
        "params_after": float(params_after),
        "ratio": params_after / params_before,
        "ppl_before": before["perplexity"],
        "ppl_after": after["perplexity"],
        "accuracy_before": before["next_token_accuracy"],
        "accuracy_after": after["next_token_accuracy"],
        "prune_seconds": time.perf_counter() - t0,
    }
    if search is not None:
        metrics.update(
            planned_speedup=search.speedup,
            source_decode_b1_tps=search.source_tps,
            searched_target_params=search.target_params,
            speedup_search_seconds=search_s,
        )
    summary = {
        **plan.summary(),
        **({"speedup_probes": search.probes} if search is not None else {}),
        "kept_layers": result.kept["kept_layers"],
        "params_after": params_after,
        "weights_sha256": sha,
    }
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_dict(result.scores.to_dict(), "importance.json")
    ctx.tracker.log_dict(summary, "plan.json")
    fig = importance_figure(result.scores, result.kept["kept_layers"])
    ctx.tracker.log_figure(fig, "importance.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    ctx.tracker.record_output("pruned", out, sha)
    return StageResult(outputs={"pruned": out}, metrics=metrics, summary=summary)
