"""The release gate on real (tiny) models with its default thresholds: a decent student passes
and becomes ``champion``; a pruned-without-recovery model and a broken int4 are blocked.

Teacher = the tiny Llama briefly trained on code (``code_lm``); student = the teacher with a
little weight noise; pruned = ``distill.prune`` to 0.5x with no recovery; int4 = the student
through RTN int4 with its groups misaligned (a packing bug), saved as fp weights.
"""

import json

import pytest

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_torch_thread")]


def _save(model, src, out):
    from distill.models.files import copy_tokenizer_files

    model.save_pretrained(out)
    copy_tokenizer_files(src, out)
    return out


@pytest.fixture(scope="module")
def candidates(code_lm, tiny_rows, tmp_path_factory):
    import torch

    from distill.data.packed import make_calib_loop
    from distill.models.loader import load_causal_lm
    from distill.prune.config import PruneConfig
    from distill.prune.core import prune_model
    from distill.quant.rtn import fake_quantize_rtn

    root = tmp_path_factory.mktemp("gate-models")
    torch.manual_seed(0)
    student = load_causal_lm(code_lm)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    out = {"student": _save(student, code_lm, root / "student")}
    pruned = load_causal_lm(code_lm)
    prune_model(
        pruned, PruneConfig(policy="width", target_params=0.5), make_calib_loop(tiny_rows[:8])
    )
    out["pruned"] = _save(pruned, code_lm, root / "pruned")
    broken = load_causal_lm(out["student"])
    fake_quantize_rtn(broken, bits=4, group_size=32)
    with torch.no_grad():
        for layer in broken.model.layers:
            for lin in (layer.mlp.up_proj, layer.mlp.down_proj, layer.self_attn.o_proj):
                lin.weight.copy_(torch.roll(lin.weight, shifts=32, dims=1))
    out["int4"] = _save(broken, code_lm, root / "int4")
    return out


@pytest.fixture(scope="module")
def ood_jsonl(tmp_path_factory):
    from distill.data.corpus import stdlib_files

    path = tmp_path_factory.mktemp("ood") / "ood.jsonl"
    files = [f for f in stdlib_files() if "email" in f.parts][:4]
    path.write_text("".join(json.dumps({"text": f.read_text()[:3000]}) + "\n" for f in files))
    return path


def test_gate_passes_decent_student_blocks_pruned_and_broken_int4(stage_ctx, code_lm, candidates):
    from mlflow import MlflowClient

    from distill.eval.config import EvaluateConfig
    from distill.eval.release import release
    from distill.eval.stage import run
    from distill.lineage.registry import register_checkpoint
    from distill.lineage.resolve import resolve_registered
    from distill.models.hashing import weights_sha256
    from distill.serve.config import ServeArgs

    ctx = stage_ctx(["evaluate"], gate={"models": ["pruned", "student", "int4"]})
    ctx.artifacts.update({"teacher": code_lm, **candidates})
    cfg = EvaluateConfig(
        max_rows=8,
        batch_size=4,
        speed={"new_tokens": 4, "repeats": 1},
        generation={"code_prompts": 2, "chat_prompts": 1, "text_prompts": 2, "max_new_tokens": 12},
    )
    report = run(ctx, cfg).summary
    by = {m["model"]: m for m in report["models"]}
    assert by["teacher"]["perplexity"] < by["pruned"]["perplexity"]
    assert {"syntax_valid", "chrf_teacher", "degenerate"} <= set(by["student"]["generation"])
    conf = report["generation"]["confidence"]["student"]["mean_logprob"]
    assert len(conf) == sum(report["generation"]["prompt_set"]["counts"].values())

    name = "gate-test"
    versions = {
        k: register_checkpoint(ctx.tracker, candidates[k], name, {"kind": k})
        for k in ("student", "int4")
    }
    said: list[str] = []
    final = release(ctx.tracker, ctx.config.gate, report, versions, name, ctx.workdir, said.append)
    print("\n".join(said))
    verdicts = final["gate"]["verdicts"]
    assert verdicts["student"]["passed"], verdicts["student"]["reasons"]
    assert not verdicts["pruned"]["passed"] and not verdicts["int4"]["passed"]
    assert any("× student" in r for r in verdicts["int4"]["reasons"])  # held to the fp student
    assert any(line.startswith("[distill] gate: int4 FAIL: ") for line in said)

    # the report on disk and in MLflow carries the verdicts
    on_disk = json.loads((ctx.workdir / "report.json").read_text())
    assert on_disk["gate"]["champion"]["model"] == "student"
    md = (ctx.workdir / "report.md").read_text()
    assert "## Release gate" in md and "`int4`: **FAIL**" in md
    assert (ctx.workdir / "pareto.png").stat().st_size > 0
    client = MlflowClient(ctx.tracker.tracking_uri)
    assert client.get_run(ctx.tracker.run_id).data.metrics["gate.student.passed"] == 1.0

    # the registry: alias on the student's version only; serve resolves the alias to its weights
    mv = client.get_model_version_by_alias(name, "champion")
    assert str(mv.version) == versions["student"]
    assert client.get_model_version(name, versions["int4"]).tags["gate.verdict"] == "fail"
    path, tags = resolve_registered(f"models:/{name}@champion", ctx.tracker.tracking_uri)
    assert weights_sha256(path) == weights_sha256(candidates["student"])
    assert tags["registered"] == f"models:/{name}/{versions['student']}"
    args = ServeArgs(
        student={"model": f"models:/{name}@champion"},
        teacher={"model": str(code_lm)},
        tracking_uri=ctx.tracker.tracking_uri,
    )
    assert args.student.model.endswith("@champion")


def test_extra_corpus_is_read_with_the_corpus_readers_and_scored_per_corpus(
    stage_ctx, tiny_mha, ood_jsonl
):
    """A JSONL corpus through ``distill.data``'s Ray Data readers, scored like the held-out split."""
    from distill.eval.config import EvaluateConfig
    from distill.eval.stage import run
    from distill.ray_config import RayConfig
    from distill.raycluster import ensure_ray

    ensure_ray(RayConfig(num_cpus=2))
    ctx = stage_ctx(["evaluate"])
    ctx.artifacts["student"] = tiny_mha.path
    cfg = EvaluateConfig(
        max_rows=4,
        batch_size=4,
        speed={"new_tokens": 4, "repeats": 1},
        extra_corpora=[{"name": "ood", "paths": [str(ood_jsonl)], "max_rows": 4}],
        generation={"enabled": False},
    )
    report = run(ctx, cfg).summary
    by = {m["model"]: m for m in report["models"]}
    assert report["extra_corpora"]["ood"]["rows"] == 4
    assert by["student"]["extra"]["ood"]["perplexity"] > 1
    assert "agreement" in by["student"]["extra"]["ood"]
    assert any(p["eval_set"] == "extra.ood" for p in report["contamination"]["pairs"])
    assert "ood ppl / acc" in (ctx.workdir / "report.md").read_text()
