"""The typed Ray Serve application builder and ``distill serve``.

``deploy/serve.yaml`` names ``import_path: distill.serve.app:build_app``; Ray validates its
``args:`` against :class:`~distill.serve.config.ServeArgs` and calls :func:`build_app`::

    serve run deploy/serve.yaml                 # Ray's CLI
    distill serve deploy/serve.yaml             # run_from_config(path): same app, same args

Model refs resolve here, in the process that builds the app (local paths become absolute,
``models:/NAME/VERSION`` or ``models:/NAME@champion`` is downloaded once into
``$DISTILL_CACHE/serve-models`` by ``distill.lineage.resolve``), so replicas only ever see local
HF directories. With ``tracking_uri`` set, every build is recorded as an MLflow
run (args as params, model paths / hashes / registered versions as tags).
"""

# No `from __future__ import annotations`: Ray inspects build_app's annotation as a class.
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.lineage.resolve import resolve_registered
from distill.lineage.tracker import check_reachable, flatten
from distill.models.compat import check_draft_compat
from distill.models.config import GGUFSource
from distill.models.hashing import weights_sha256
from distill.models.loader import resolve_source
from distill.ray_config import RayConfig
from distill.raycluster import ensure_ray
from distill.serve.config import ModelDeployment, ServeArgs, apply_serve_env
from distill.serve.deployments import ModelServer
from distill.serve.engines.vllm import vllm_deployment
from distill.serve.ingress import direct_ingress_urls
from distill.serve.router import Router

ROLES = ("student", "teacher")
DEMO_HINT = (
    "the default deploy/serve.yaml serves the demo's outputs: run "
    "`distill run pipelines/configs/smollm2.yaml` first, or point args.student.model / "
    "args.teacher.model at HF checkpoint directories"
)


def resolve_model(ref: str, tracking_uri: str | None = None) -> tuple[Path, dict[str, str]]:
    """A model ref -> (absolute local HF directory, lineage tags)."""
    if ref == "gguf:default":
        return resolve_source(GGUFSource()).path, {"source": ref}
    if ref.startswith("models:/"):
        if not tracking_uri:
            raise DistillError(f"{ref} needs args.tracking_uri to resolve")
        return resolve_registered(ref, tracking_uri)  # models:/NAME/VERSION | models:/NAME@ALIAS
    path = Path(ref).expanduser().resolve()
    if not (path / "config.json").exists() and not (path / "genai_config.json").exists():
        raise DistillError(
            f"model {ref!r}: no HF checkpoint (config.json) or int4 engine export "
            f"(genai_config.json) at {path}; {DEMO_HINT}"
        )
    return path, {"source": ref}


def record_deployment(args: ServeArgs, resolved: dict[str, tuple[Path, dict[str, str]]]) -> str:
    """One MLflow run describing this deployment; returns its run id."""
    from mlflow import MlflowClient

    uri = args.tracking_uri or ""
    check_reachable(uri, 10.0)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(args.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(args.experiment)
    tags = {"distill.kind": "serve", "served_model_name": args.served_model_name}
    for role, (path, extra) in resolved.items():
        tags[f"{role}.path"] = str(path)
        tags[f"{role}.engine"] = getattr(args, role).engine
        if any(path.glob("*.safetensors")):  # an engine export has its own files
            tags[f"{role}.weights_sha256"] = weights_sha256(path)
        tags.update({f"{role}.{k}": v for k, v in extra.items() if v})
    run = client.create_run(exp_id, run_name=f"serve-{args.served_model_name}", tags=tags)
    for k, v in flatten(args.model_dump(mode="json")).items():
        client.log_param(run.info.run_id, k, v[:6000])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _model_deployment(
    role: str, dep: ModelDeployment, path: Path, context_limit: int, draft: dict | None = None
):
    if dep.placement == "router":
        return None  # the Router replica builds this engine itself
    if dep.engine == "vllm":
        return vllm_deployment(role, dep, path, context_limit, draft)

    return ModelServer.options(
        name=role.capitalize(),
        num_replicas=dep.replicas,
        max_ongoing_requests=dep.max_ongoing_requests,
        max_queued_requests=dep.max_queued_requests,
        ray_actor_options={"num_cpus": dep.num_cpus, "num_gpus": dep.num_gpus},
    ).bind(role, str(path), dep.model_dump(mode="json"), context_limit, draft)


def speculative_draft(args: ServeArgs, paths: dict[str, Path]) -> dict | None:
    """``cascade.mode: speculative``: the student as the teacher's draft (its tokenizer checked
    against the teacher's first); None in cascade mode."""
    draft = args.draft(str(paths["student"]))
    if draft is None:
        return None

    check_draft_compat(
        paths["teacher"], paths["student"], "args.student.model (cascade.mode: speculative)"
    )
    if args.teacher.engine == "vllm":
        draft["num_speculative_tokens"] = (
            args.cascade.speculative.draft_tokens
        )  # an int (validated)
    return draft


def build_app(args: ServeArgs):
    """Router(ingress) -> Student, Teacher. ``args`` arrives validated (Ray's typed builder).
    A model with ``placement: router`` has no deployment of its own: each Router replica holds
    its engine and reserves its CPUs / GPUs."""

    if isinstance(args, dict):
        args = ServeArgs.model_validate(args)
    resolved = {role: resolve_model(getattr(args, role).model, args.tracking_uri) for role in ROLES}
    if args.tracking_uri:
        record_deployment(args, resolved)
    draft = speculative_draft(args, {role: resolved[role][0] for role in ROLES})
    student = _model_deployment("student", args.student, resolved["student"][0], args.context_limit)
    teacher = _model_deployment(
        "teacher", args.teacher, resolved["teacher"][0], args.context_limit, draft
    )
    lim = args.limits
    return Router.options(
        num_replicas=args.router_replicas,
        # room above max_inflight so that our own 503s, /healthz and /v1/stats get through
        max_ongoing_requests=lim.max_inflight + 8,
        max_queued_requests=lim.max_queued,
        backpressure_config={"status_code": 503, "retry_after_s": lim.retry_after_s},
        ray_actor_options=router_resources(args),
        user_config={"cascade": args.cascade.model_dump()},
    ).bind(
        student,
        teacher,
        args.model_dump(mode="json", exclude={"cascade"}),
        {role: str(resolved[role][0]) for role in ROLES},
        draft,
    )


def router_resources(args: ServeArgs) -> dict[str, float]:
    """One Router replica's Ray resources: its own plus those of the models it hosts."""
    hosted = [getattr(args, r) for r in ROLES if getattr(args, r).placement == "router"]
    return {
        "num_cpus": args.router_num_cpus + sum(d.num_cpus for d in hosted),
        "num_gpus": sum(d.num_gpus for d in hosted),
    }


def required_resources(args: ServeArgs) -> dict[str, float]:
    """Ray CPUs / GPUs every replica of the app reserves together."""
    own = [getattr(args, r) for r in ROLES if getattr(args, r).placement == "replica"]
    router = router_resources(args)
    cpus = args.router_replicas * router["num_cpus"] + sum(d.replicas * d.num_cpus for d in own)
    gpus = args.router_replicas * router["num_gpus"] + sum(d.replicas * d.num_gpus for d in own)
    return {"CPU": cpus, "GPU": gpus}


def check_resources(args: ServeArgs, available: dict[str, float]) -> None:
    """Fail before deploying when the replicas cannot all be placed (Serve would wait forever)."""
    need = required_resources(args)
    for key, amount in need.items():
        if amount > available.get(key, 0.0) + 1e-9:
            raise DistillError(
                f"the app reserves {amount:g} {key} (router + student + teacher replicas) but the "
                f"Ray cluster has {available.get(key, 0.0):g}: lower num_cpus / num_gpus / "
                "replicas in args, or start Ray with more logical resources"
            )


def load_serve_config(path: Path) -> dict[str, Any]:
    """Read a Serve config file and validate every distill application's ``args``."""
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise DistillError(f"serve config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DistillError(f"{path}: invalid YAML: {e}") from None
    apps = cfg.get("applications")
    if not isinstance(apps, list) or not apps:
        raise DistillError(f"{path}: needs 'applications:' (a list with at least one app)")
    for i, app in enumerate(apps):
        where = f"{path}: applications[{i}]"
        if app.get("import_path") != "distill.serve.app:build_app":
            raise DistillError(f"{where}.import_path must be distill.serve.app:build_app")
        if app.get("deployments"):
            raise DistillError(f"{where}.deployments: not supported here; set it through args")
        try:
            app["args"] = ServeArgs.model_validate(app.get("args") or {})
        except ValidationError as e:
            msg = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise DistillError(f"{where}.args: {msg}") from None
    return cfg


def run_from_config(path: Path, blocking: bool = True) -> str:
    """``distill serve CONFIG``: start Serve on the config's host/port, deploy, return base URL."""
    import time

    from ray import serve

    cfg = load_serve_config(Path(path))
    http = cfg.get("http_options") or {}
    host, port = str(http.get("host", "127.0.0.1")), int(http.get("port", 8000))
    apply_serve_env()  # a local Ray started next inherits it
    ensure_ray(RayConfig())
    import ray

    for app in cfg["applications"]:
        check_resources(app["args"], ray.cluster_resources())
    serve.start(http_options={"host": host, "port": port})
    urls, direct = [], []
    for app in cfg["applications"]:
        prefix, name = app.get("route_prefix") or "/", app.get("name", "default")
        serve.run(build_app(app["args"]), name=name, route_prefix=prefix)
        urls.append(f"http://{host}:{port}{prefix.rstrip('/')}")
        direct += [u + prefix.rstrip("/") for u in direct_ingress_urls(name, host, port)]
    print(f"serving {', '.join(urls)}  (OpenAI base URL: {urls[0]}/v1)")
    if direct:  # high-throughput mode: the Router replicas serve HTTP themselves too
        print(f"direct to the Router replicas (no proxy hop): {'/v1, '.join(direct)}/v1")
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return urls[0]
