"""The ``distill`` command line.

distill run pipelines/configs/smoke.yaml [--workdir DIR] [--set prune.target_params=0.5] [-v]
distill lineage RUN_ID [--workdir DIR | --tracking-uri URI]
distill serve deploy/serve.yaml
distill monitor runs/serve-log --reference runs/smollm2/report.json
distill calibrate --student runs/smollm2/student --prompts runs/smollm2/data/heldout.parquet \
    --target-agreement 0.8 --serve-config deploy/serve.yaml --out runs/smollm2/calibration
distill export --format gguf --quant q4_k_m runs/smollm2/student runs/smollm2/student-q4_k_m.gguf
distill submit pipelines/configs/smoke.yaml --address http://127.0.0.1:8265
distill status JOB_ID --address ... ;  distill logs JOB_ID --address ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.runtime.config import GGUF_QUANTS


def _table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from distill.eval.report import main_table

    t = Table(title=f"distill results — {report['pipeline']} ({report['machine']})")
    header, rows = main_table(report)
    for title in header:  # numbers never wrap; the verdict column may
        t.add_column(title, justify="right", no_wrap=title != "gate")
    for row in rows:
        t.add_row(*row)
    Console(width=max(Console().width, 200)).print(t)


def cmd_run(args: argparse.Namespace) -> int:
    from distill.console import quiet_output
    from distill.pipeline import load_config
    from distill.runner import log_file, run_pipeline

    overrides = list(args.set or [])
    if args.workdir:
        overrides.append(f"workdir={args.workdir}")
    if args.reuse_from:
        overrides.append(f"reuse_from=[{','.join(args.reuse_from)}]")
    cfg = load_config(Path(args.config), overrides)
    with quiet_output(log_file(Path(cfg.workdir).resolve()), args.verbose) as console:
        summary = run_pipeline(cfg, console, verbose=args.verbose)
    if summary.report:  # the gate's verdicts were printed as the run ended
        _table(summary.report)
        print(f"report: {summary.workdir / 'report.json'}  ({summary.workdir / 'report.md'})")
    print(f"mlflow run: {summary.run_id}  (tracking {summary.tracking_uri})")
    print(f"lineage: distill lineage {summary.run_id} --workdir {summary.workdir}")
    return 0


def _tracking_uri(args: argparse.Namespace) -> str:
    import os

    from distill.lineage.config import TrackingConfig
    from distill.lineage.tracker import resolve_tracking_uri

    if args.tracking_uri:
        return args.tracking_uri
    if args.workdir:
        return resolve_tracking_uri(TrackingConfig(), Path(args.workdir))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    raise DistillError("give --workdir (local SQLite store) or --tracking-uri")


def cmd_lineage(args: argparse.Namespace) -> int:
    from distill.lineage.show import format_lineage, lineage

    info = lineage(_tracking_uri(args), args.run_id)
    print(json.dumps(info, indent=2) if args.json else format_lineage(info))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from distill.serve import run_from_config

    run_from_config(Path(args.config), blocking=not args.no_block)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from distill.monitor.report import format_summary, run_monitor

    result = run_monitor(
        Path(args.log),
        Path(args.reference),
        args.model,
        args.scoring,
        args.window,
        args.step,
        args.alpha,
        Path(args.out) if args.out else None,
    )
    for line in format_summary(result):
        print(line)
    out = Path(result.out)
    print(f"wrote {out / 'monitor.json'} and {out / 'monitor.png'}")
    return 3 if (args.fail_on_drift and result.first_drift is not None) else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from distill.serve.calibrate_run import CalibrateConfig, run_calibration

    keys = set(CalibrateConfig.model_fields) & set(vars(args))
    values = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    try:
        cfg = CalibrateConfig.model_validate(values)
    except ValidationError as e:
        msg = "; ".join(f"--{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise DistillError(msg.replace("_", "-")) from None
    report = run_calibration(cfg)
    ch, check = report["choice"], report["heldout_check"]
    met = "meets" if ch["met"] else "does NOT meet"
    q = f" (q {ch['quantile']:g})" if ch.get("quantile") is not None else ""
    print(
        f"calibrated on {report['prompts'] // 2} prompts ({met} the target): scoring "
        f"{ch['scoring']}{q} after {ch['decide_after_tokens']} tokens, threshold "
        f"{ch['threshold']:.4f} -> fallback {ch['fallback_rate']:.2f}, agreement "
        f"{ch['agreement']:.3f}"
    )
    print(
        f"held-out check on {report['prompts'] - report['prompts'] // 2} prompts: fallback "
        f"{check['fallback_rate']:.2f}, agreement {check['agreement']:.3f} (student alone "
        f"{report['student_alone']['agreement']:.3f})"
    )
    print(f"report: {cfg.out / 'calibration.json'}")
    if report.get("serve_config"):
        print(f"serve config: {report['serve_config']}  (distill serve {report['serve_config']})")
    if report.get("mlflow_run_id"):
        print(f"mlflow run: {report['mlflow_run_id']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from distill.models.hashing import file_sha256
    from distill.runtime.gguf_export import export_gguf

    out = export_gguf(Path(args.model_dir), Path(args.out), args.quant, threads=args.threads)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.quant}, sha256 {file_sha256(out)})"
    )
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from distill import jobs

    return jobs.main(args)


VERBOSE_HELP = (
    "stream Ray's worker logs and Ray Data progress to the console (always kept on disk: "
    "<workdir>/logs/distill.log and <workdir>/logs/ray)"
)


Subparsers = Any  # argparse._SubParsersAction: private in typeshed


def _add_run(sub: Subparsers) -> None:
    r = sub.add_parser("run", help="run a pipeline config on local Ray or $RAY_ADDRESS")
    r.add_argument("config")
    r.add_argument("--workdir")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    r.add_argument(
        "--reuse-from",
        action="append",
        metavar="WORKDIR",
        help="reuse the corpus and the finished stages of another run whose keys match",
    )
    r.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    r.set_defaults(fn=cmd_run)


def _add_lineage(sub: Subparsers) -> None:
    lg = sub.add_parser("lineage", help="print the stage tree of a pipeline run")
    lg.add_argument("run_id")
    lg.add_argument("--workdir")
    lg.add_argument("--tracking-uri")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(fn=cmd_lineage)


def _add_serve(sub: Subparsers) -> None:
    s = sub.add_parser("serve", help="deploy a Ray Serve config (deploy/serve.yaml)")
    s.add_argument("config")
    s.add_argument("--no-block", action="store_true")
    s.set_defaults(fn=cmd_serve)


def _add_monitor(sub: Subparsers) -> None:
    m = sub.add_parser("monitor", help="fallback rate and confidence drift of a request log")
    m.add_argument("log", help="request log directory (args.request_log.path) or one file")
    m.add_argument("--reference", required=True, help="report.json of the evaluated run")
    m.add_argument("--model", help="model whose evaluation confidences to compare with")
    m.add_argument("--scoring", help="mean_logprob | min_prob | entropy (default: the log's)")
    m.add_argument("--window", type=int, default=100, help="scored requests per KS window")
    m.add_argument("--step", type=int, default=25, help="requests between windows")
    m.add_argument("--alpha", type=float, default=1e-3, help="p-value below which a window drifts")
    m.add_argument("--out", help="where monitor.json / monitor.png go (default: the log dir)")
    m.add_argument("--fail-on-drift", action="store_true", help="exit code 3 when drift is found")
    m.set_defaults(fn=cmd_monitor)


def _add_calibrate(sub: Subparsers) -> None:
    c = sub.add_parser("calibrate", help="choose the cascade threshold on held-out prompts")
    c.add_argument("--student", required=True, help="HF dir, int4 engine dir or models:/N/V")
    c.add_argument("--teacher", help="HF dir, gguf:default (default) or models:/N/V")
    c.add_argument("--prompts", required=True, help="held-out .parquet (packed rows) or .jsonl")
    c.add_argument("--out", required=True, help="directory for calibration.json/.png, serve.yaml")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-agreement", dest="target_agreement", type=float)
    g.add_argument("--max-fallback", dest="max_fallback", type=float)
    c.add_argument("--num-prompts", dest="num_prompts", type=int)
    c.add_argument("--prompt-tokens", dest="prompt_tokens", type=int)
    c.add_argument("--max-tokens", dest="max_tokens", type=int)
    c.add_argument(
        "--decide-after-tokens",
        dest="decide_after_tokens",
        type=lambda v: [int(x) for x in v.split(",")],
        help="candidates, e.g. 8,16 (default)",
    )
    c.add_argument(
        "--quantiles",
        type=lambda v: [float(x) for x in v.split(",")],
        help="candidate q of the quantile (Chow-Quantile) scoring, e.g. 0.1,0.25,0.5 (default)",
    )
    c.add_argument("--threads", type=int)
    c.add_argument("--batch-size", dest="batch_size", type=int)
    c.add_argument("--serve-config", dest="serve_config", help="write OUT/serve.yaml from it")
    c.add_argument("--tracking-uri", dest="tracking_uri")
    c.add_argument(
        "--register",
        dest="register_version",
        help="models:/NAME/VERSION to tag with the chosen cascade",
    )
    c.set_defaults(fn=cmd_calibrate)


def _add_export(sub: Subparsers) -> None:
    e = sub.add_parser("export", help="export an HF checkpoint to another runtime's format (GGUF)")
    e.add_argument("model_dir", help="HF checkpoint directory (Llama architecture, fp weights)")
    e.add_argument("out", help="the .gguf file to write")
    e.add_argument("--format", choices=["gguf"], default="gguf")
    e.add_argument("--quant", choices=list(GGUF_QUANTS), default="q8_0",
                   help="q4_k_m runs llama.cpp's llama-quantize (benchmarks/build_llamacpp.sh)")  # fmt: skip
    e.add_argument("--threads", type=int, help="llama-quantize threads (default: all cores)")
    e.set_defaults(fn=cmd_export)


def _add_jobs(sub: Subparsers) -> None:
    for name, helptext in [
        ("submit", "submit a pipeline config as a Ray job"),
        ("status", "status of a Ray job"),
        ("logs", "logs of a Ray job"),
    ]:
        j = sub.add_parser(name, help=helptext)
        j.add_argument("target", help="config path (submit) or job id")
        j.add_argument("--address", default=None, help="Ray dashboard, e.g. http://HOST:8265")
        j.add_argument("--set", action="append", metavar="KEY=VALUE")
        j.add_argument("--no-wait", action="store_true")
        if name == "submit":
            j.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
        j.set_defaults(fn=cmd_jobs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distill", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_lineage, _add_serve, _add_monitor, _add_calibrate, _add_export):
        add(sub)
    _add_jobs(sub)  # submit, status, logs
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except DistillError as e:
        print(f"distill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
