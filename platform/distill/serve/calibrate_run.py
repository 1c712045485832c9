"""``distill calibrate``: replay held-out prompts through the student and the teacher, draw the
quality-vs-fallback curve of each scoring method and decision point (the student's first N
tokens, ``--decide-after-tokens 8,16``), pick the threshold that meets a target, and
record it where a deployment picks it up::

    distill calibrate --student runs/smollm2/student --teacher gguf:default \\
        --prompts runs/smollm2/data/heldout.parquet --target-agreement 0.8 \\
        --serve-config deploy/serve.yaml --out runs/smollm2/calibration \\
        --tracking-uri sqlite:///runs/smollm2/mlflow.db [--register models:/smollm2-student/1]

Writes ``OUT/calibration.json`` (settings, curves, choice, the held-out check),
``OUT/calibration.png``, and with ``--serve-config`` ``OUT/serve.yaml``: the same Serve config with
``args.cascade`` set (threshold, scoring, quantile, decide_after_tokens, calibration). The
candidates are every scoring of ``distill.confidence`` at every decision point, the
Chow-Quantile score once per ``--quantiles`` value (named ``quantile:0.25@16``); the report also
gives each candidate's own best threshold on the fitting half and its held-out figures. With a tracking URI
the run goes to MLflow (experiment ``distill-calibrate``); ``--register`` tags that model version
with the chosen cascade (``distill.cascade.*``). The prompts are split in two: the threshold is
chosen on the first half and the figures stated for the second half are measured, not fitted.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from distill.atomic import atomic_file
from distill.confidence import DEFAULT_QUANTILE, SCORINGS, score
from distill.config.base import DistillError, StrictModel
from distill.data.packed import part_files, read_rows
from distill.lineage.tracker import check_reachable, flatten
from distill.models.loader import load_tokenizer
from distill.serve.app import load_serve_config, resolve_model
from distill.serve.calibrate import Choice, Target, choose, evaluate, token_agreement, tradeoff
from distill.serve.config import BatchingConfig
from distill.serve.engines import EngineOptions, build_engine
from distill.serve.engines.base import EngineRequest, SamplingParams


class CalibrateConfig(StrictModel):
    student: str = Field(..., description="HF dir, int4 engine dir or models:/NAME/VERSION")
    teacher: str = Field("gguf:default", description="HF dir, gguf:default or models:/...")
    prompts: Path = Field(..., description="held-out rows (.parquet, packed) or .jsonl prompts")
    out: Path
    num_prompts: int = Field(64, ge=4)
    prompt_tokens: int = Field(48, ge=1, description="prompt length cut from packed rows")
    max_tokens: int = Field(32, ge=1)
    decide_after_tokens: list[int] = Field(
        [8, 16], min_length=1, description="candidates: the student's first N tokens are scored"
    )
    quantiles: list[float] = Field(
        [0.1, 0.25, 0.5], min_length=1, description="candidate q of the quantile scoring"
    )
    target_agreement: float | None = Field(None, gt=0, le=1)
    max_fallback: float | None = Field(None, ge=0, le=1)
    threads: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1)
    serve_config: Path | None = None
    tracking_uri: str | None = None
    register_version: str | None = Field(None, description="models:/NAME/VERSION to tag")

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, v: list[float]) -> list[float]:
        bad = [q for q in v if not 0.0 <= q <= 1.0]
        if bad:
            raise ValueError(f"every quantile must be in [0, 1], got {bad}")
        return v


@dataclass
class Replayed:
    ids: list[int]
    logprobs: list[float]
    entropies: list[float]


def load_prompts(cfg: CalibrateConfig, tok: Any) -> list[list[int]]:
    """Prompt token ids: cut from packed held-out rows (a Parquet file, or the directory of part
    files the corpus stage writes), or tokenized from a JSONL file."""
    path = cfg.prompts

    if not path.exists() or not part_files(path):
        raise DistillError(f"prompts not found: {path} (a .parquet file or directory, or .jsonl)")
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                try:
                    text = json.loads(line)["prompt"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DistillError(f'{path}:{i + 1}: expected {{"prompt": ...}}') from None
                out.append(list(tok(text)["input_ids"]))
        return out[: cfg.num_prompts]
    rows = read_rows(path)
    if rows.size == 0 or rows.shape[1] < cfg.prompt_tokens:
        raise DistillError(f"{path}: no rows of at least {cfg.prompt_tokens} tokens")
    starts = range(0, rows.shape[1] - cfg.prompt_tokens + 1, max(cfg.prompt_tokens, 64))
    cuts = [row[s : s + cfg.prompt_tokens].tolist() for s in starts for row in rows]
    return cuts[: cfg.num_prompts]


def replay(ref: str, prompts: list[list[int]], cfg: CalibrateConfig) -> list[Replayed]:
    """Greedy answers with per-token log-probs / entropies, batched by the serving engine."""

    path, _ = resolve_model(ref, cfg.tracking_uri)
    kind = "onnxruntime-genai" if (path / "genai_config.json").exists() else "hf"
    batching = BatchingConfig(  # offline: everything queues, nothing is shed, no pacing
        max_batch_size=cfg.batch_size,
        max_waiting=len(prompts),
        max_queue_wait_s=float("inf"),
        stream_interval_ms=0,
    )
    engine = build_engine(kind, path, EngineOptions(threads=cfg.threads, batching=batching))
    params = SamplingParams(max_tokens=cfg.max_tokens)

    async def one(ids: list[int]) -> Replayed:
        out = Replayed([], [], [])
        async for c in engine.stream(EngineRequest(ids, params)):
            out.ids += c.token_ids
            out.logprobs += c.logprobs
            out.entropies += c.entropies
        return out

    async def run() -> list[Replayed]:
        return await asyncio.gather(*(one(p) for p in prompts))

    try:
        return asyncio.run(run())
    finally:
        engine.close()


def scorings(quantiles: list[float]) -> list[str]:
    """Candidate scorings: every method, the quantile one once per q (``quantile:0.25``)."""
    out = [m for m in SCORINGS if m != "quantile"]
    return out + [f"quantile:{q:g}" for q in sorted(set(quantiles))]


def parse_candidate(name: str) -> tuple[str, float | None, int]:
    """``"quantile:0.25@16"`` -> ``("quantile", 0.25, 16)``; ``"min_prob@8"`` -> (…, None, 8)."""
    method, k = name.split("@")
    scoring, _, q = method.partition(":")
    return scoring, (float(q) if q else None), int(k)


def candidate_score(r: Replayed, name: str) -> float:
    scoring, q, k = parse_candidate(name)
    return score(r.logprobs[:k], r.entropies[:k], scoring, DEFAULT_QUANTILE if q is None else q)


def curves_for(
    student: list[Replayed],
    teacher: list[Replayed],
    ks: list[int],
    quantiles: list[float] = (DEFAULT_QUANTILE,),  # type: ignore[assignment]
) -> dict[str, Any]:
    """Agreement per prompt, and confidences per ``scoring@decide_after_tokens`` candidate."""
    agree = [token_agreement(s.ids, t.ids) for s, t in zip(student, teacher, strict=True)]
    exact = [s.ids == t.ids for s, t in zip(student, teacher, strict=True)]
    names = [f"{m}@{k}" for m in scorings(list(quantiles)) for k in sorted(set(ks))]
    confs = {n: [candidate_score(s, n) for s in student] for n in names}
    return {"agreement": agree, "exact": exact, "confidence": confs}


def fit_and_check(data: dict[str, Any], target: Target) -> dict[str, Any]:
    """Choose on the first half, measure on the second: the overall choice and, per candidate,
    its own best threshold (so the scorings can be compared on held-out prompts)."""
    n = len(data["agreement"])
    half = n // 2
    agree, exact = data["agreement"], data["exact"]
    fit = {m: tradeoff(c[:half], agree[:half], exact[:half]) for m, c in data["confidence"].items()}

    def check(name: str, threshold: float) -> Any:
        c = data["confidence"][name]
        return evaluate(threshold, c[half:], agree[half:], exact[half:])

    choice = choose(fit, target)
    per = {}
    for m, pts in fit.items():
        own = choose({m: pts}, target)
        per[m] = {
            "met": own.met,
            "fit": asdict(own.point),
            "heldout": asdict(check(m, own.point.threshold)),
        }
    return {"choice": choice, "check": check(choice.scoring, choice.point.threshold), "per": per}


def run_calibration(cfg: CalibrateConfig) -> dict[str, Any]:
    """Replay, fit on the first half, check on the second; write outputs; return the report."""

    target = Target(cfg.target_agreement, cfg.max_fallback)
    t0 = time.time()
    tok = load_tokenizer(resolve_model(cfg.student, cfg.tracking_uri)[0])
    prompts = load_prompts(cfg, tok)
    if len(prompts) < 4:
        raise DistillError(f"{cfg.prompts}: {len(prompts)} prompts; calibration needs at least 4")
    student = replay(cfg.student, prompts, cfg)
    teacher = replay(cfg.teacher, prompts, cfg)
    data = curves_for(student, teacher, cfg.decide_after_tokens, cfg.quantiles)
    fitted = fit_and_check(data, target)
    choice, check = fitted["choice"], fitted["check"]
    full = {m: tradeoff(v, data["agreement"], data["exact"]) for m, v in data["confidence"].items()}
    scoring, q, k = parse_candidate(choice.scoring)
    report = {
        "settings": cfg.model_dump(mode="json"),
        "prompts": len(prompts),
        "seconds": round(time.time() - t0, 1),
        "student_alone": {
            "agreement": sum(data["agreement"]) / len(prompts),
            "exact": sum(data["exact"]) / len(prompts),
        },
        "choice": {
            "scoring": scoring,
            "quantile": q,
            "decide_after_tokens": k,
            "met": choice.met,
            **asdict(choice.point),
        },
        "heldout_check": asdict(check),
        "candidates": fitted["per"],
        "curves": {m: [asdict(p) for p in pts] for m, pts in full.items()},
    }
    write_outputs(cfg, report, full, choice)
    return report


def _figure(curves: dict[str, list], choice: Choice, cfg: CalibrateConfig):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m, pts in curves.items():
        ax.plot([p.fallback_rate for p in pts], [p.agreement for p in pts], ".-", label=m)
    ax.plot([choice.point.fallback_rate], [choice.point.agreement], "k*", ms=12, label="chosen")
    if cfg.target_agreement:
        ax.axhline(cfg.target_agreement, color="grey", ls=":", lw=1)
    ax.set_xlabel("fallback rate (teacher answers)")
    ax.set_ylabel("agreement with the teacher")
    ax.set_title(f"cascade: chosen {choice.scoring} (scoring@decide_after_tokens)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _atomic_write(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def calibrated_serve_config(src: Path, cascade: dict[str, Any]) -> str:
    """``src`` with ``args.cascade`` of every distill application updated (validated)."""
    import yaml

    load_serve_config(src)  # the input must be valid to begin with
    raw = yaml.safe_load(src.read_text())
    for app in raw["applications"]:
        app.setdefault("args", {}).setdefault("cascade", {}).update(cascade)
    header = f"# Written by `distill calibrate` from {src}: args.cascade is calibrated.\n"
    return header + yaml.safe_dump(raw, sort_keys=False)


def write_outputs(cfg: CalibrateConfig, report: dict, curves: dict, choice: Choice) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    fig = _figure(curves, choice, cfg)
    with atomic_file(cfg.out / "calibration.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    cascade = {
        "threshold": round(choice.point.threshold, 6),
        "scoring": report["choice"]["scoring"],
        **(
            {"quantile": report["choice"]["quantile"]}
            if report["choice"]["quantile"] is not None
            else {}
        ),
        "decide_after_tokens": report["choice"]["decide_after_tokens"],
        "takeover": "prompt",
        "calibration": str((cfg.out / "calibration.json").resolve()),
    }
    if cfg.tracking_uri:
        run_id = _log_mlflow(cfg, report, fig, cascade)
        report["mlflow_run_id"] = run_id
        cascade["calibration"] = f"mlflow run {run_id}"
    report["cascade"] = cascade
    if cfg.serve_config:
        text = calibrated_serve_config(cfg.serve_config, cascade)
        _atomic_write(cfg.out / "serve.yaml", text)
        report["serve_config"] = str(cfg.out / "serve.yaml")
    _atomic_write(cfg.out / "calibration.json", json.dumps(report, indent=2))


def _log_mlflow(cfg: CalibrateConfig, report: dict, fig: Any, cascade: dict[str, Any]) -> str:
    from mlflow import MlflowClient

    uri = cfg.tracking_uri or ""
    check_reachable(uri, 10.0)
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("distill-calibrate")
    exp_id = exp.experiment_id if exp else client.create_experiment("distill-calibrate")
    tags = {"distill.kind": "calibrate", **{f"cascade.{k}": str(v) for k, v in cascade.items()}}
    run = client.create_run(exp_id, run_name="calibrate", tags=tags)
    rid = run.info.run_id
    for k, v in flatten(report["settings"]).items():
        client.log_param(rid, k, v[:6000])
    for prefix, block in (("fit", report["choice"]), ("heldout", report["heldout_check"])):
        for k in ("threshold", "fallback_rate", "agreement", "exact"):
            client.log_metric(rid, f"{prefix}.{k}", float(block[k]))
    for m, pts in report["curves"].items():
        # mean_logprob@16 -> curve.mean_logprob.after16.*, quantile:0.25@16 -> quantile.q0.25...
        key = m.replace("@", ".after").replace(":", ".q")
        for i, p in enumerate(pts):
            client.log_metric(rid, f"curve.{key}.agreement", p["agreement"], step=i)
            client.log_metric(rid, f"curve.{key}.fallback_rate", p["fallback_rate"], step=i)
    client.log_figure(rid, fig, "calibration.png")
    client.log_dict(rid, report, "calibration.json")
    client.set_terminated(rid)
    if cfg.register_version:
        name, version = cfg.register_version.removeprefix("models:/").strip("/").split("/")
        for k, v in {**cascade, "calibration": f"mlflow run {rid}"}.items():
            client.set_model_version_tag(name, version, f"distill.cascade.{k}", str(v))
    return rid
