"""The Kubernetes manifests in k8s/: structure of the ray.io/v1 kinds, and that what they name
(pipeline configs, Serve import paths, the MLflow Service, volumes) exists. No cluster needed."""

from __future__ import annotations

import ast
import re
import shlex
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}
SERVE_TOP_KEYS = {
    "proxy_location",
    "http_options",
    "grpc_options",
    "logging_config",
    "applications",
    "target_capacity",
}


def _docs() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


DOCS = _docs()


def _of_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in DOCS if d.get("kind") == kind]


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, RayClusterSpec) of every RayCluster, RayJob and RayService."""
    specs = []
    for path, d in DOCS:
        key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}
        if d.get("kind") in key:
            k = key[d["kind"]]
            specs.append((f"{path.name}:{d['kind']}", d["spec"] if k is None else d["spec"][k]))
    return specs


def _pod_specs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    pods = [spec["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])]
    return pods


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_every_manifest_parses_with_kind_and_name():
    assert {p.name for p, _ in DOCS} >= {
        "raycluster.yaml",
        "rayjob.yaml",
        "rayservice.yaml",
        "mlflow.yaml",
    }
    for path, d in DOCS:
        assert d.get("apiVersion") and d.get("kind"), path
        meta = d.get("metadata", {})
        assert meta.get("name") or meta.get("generateName"), f"{path}: {d['kind']} has no name"
        if d["kind"] in RAY_KINDS:
            assert d["apiVersion"] == "ray.io/v1", f"{path}: {d['kind']} must be ray.io/v1"
    kinds = {d["kind"] for _, d in DOCS}
    assert RAY_KINDS | {"Deployment", "Service", "PersistentVolumeClaim"} <= kinds


@pytest.mark.parametrize(
    "where,spec", _cluster_specs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_ray_cluster_spec_structure(where, spec):
    assert spec.get("rayVersion") == version("ray"), f"{where}: rayVersion != installed ray"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    for k, v in head["rayStartParams"].items():
        assert isinstance(v, str), f"{where}: rayStartParams.{k} must be a string"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no workerGroupSpecs"
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names), f"{where}: duplicate groupName"
    for g in groups:
        assert isinstance(g["rayStartParams"], dict)
        lo, n, hi = g["minReplicas"], g["replicas"], g["maxReplicas"]
        assert all(isinstance(x, int) for x in (lo, n, hi)), f"{where}: replicas must be ints"
        assert 0 <= lo <= n <= hi, f"{where}: need minReplicas <= replicas <= maxReplicas"
    images = set()
    for pod in _pod_specs(spec):
        containers = pod["containers"]
        assert containers, f"{where}: a pod template has no containers"
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in containers:
            assert c.get("name") and c.get("image"), f"{where}: container needs name and image"
            images.add(c["image"])
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}: volumeMount {m['name']} has no volume"
    assert len(images) == 1, f"{where}: head and workers should run one image: {images}"


def test_pvcs_and_mlflow_service_referenced_by_pods_exist():
    pvcs = {d["metadata"]["name"] for _, d in _of_kind("PersistentVolumeClaim")}
    services = {
        d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]}
        for _, d in _of_kind("Service")
    }
    for where, spec in _cluster_specs():
        for pod in _pod_specs(spec):
            for v in pod.get("volumes", []):
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in pvcs, where
            for c in pod["containers"]:
                uri = _env(c).get("MLFLOW_TRACKING_URI")
                assert uri, f"{where}: {c['name']} lacks MLFLOW_TRACKING_URI"
                u = urlparse(uri)
                assert u.scheme == "http" and u.hostname in services, f"{where}: {uri}"
                assert u.port in services[u.hostname], f"{where}: {uri} port not in Service"


def test_mlflow_server_deployment():
    ((path, dep),) = _of_kind("Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = " ".join(c.get("command", []) + c.get("args", []))
    assert "mlflow server" in args
    for flag in ("--backend-store-uri", "--artifacts-destination", "--host=0.0.0.0"):
        assert flag in args, f"{path}: mlflow server needs {flag}"
    assert c["image"].endswith(f":v{version('mlflow')}"), "MLflow image != pinned mlflow"
    (svc,) = _of_kind("Service")
    name = svc[1]["metadata"]["name"]
    allowed = re.search(r"--allowed-hosts=(\S+)", args)
    assert allowed and name in allowed.group(1).split(","), "Service name must be an allowed host"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc[1]["spec"]["selector"].items() <= labels.items(), "Service selects no pod"
    mounts = {m["name"] for m in c["volumeMounts"]}
    assert mounts <= {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}


def test_rayjob_entrypoint_runs_an_existing_valid_config():
    from distill.pipeline import load_config

    ((path, job),) = _of_kind("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    run = argv[argv.index("run") + 1 :] if "run" in argv else []
    assert argv[:2] == ["distill", "run"] or argv[:4] == ["python", "-m", "distill.cli", "run"]
    config = REPO / run[0]
    assert config.is_file(), f"{path}: entrypoint config {run[0]} does not exist"
    assert load_config(config).name  # validates the config the job would run
    assert isinstance(yaml.safe_load(job["spec"].get("runtimeEnvYAML", "{}")), dict)


def test_every_config_path_named_in_manifests_exists():
    named = set()
    for path in K8S.iterdir():
        named |= set(re.findall(r"pipelines/configs/[\w./-]+\.yaml", path.read_text()))
    assert named
    for rel in named:
        assert (REPO / rel).is_file(), f"k8s names {rel}, which does not exist"


def _serve_config() -> tuple[Path, dict[str, Any]]:
    ((path, svc),) = _of_kind("RayService")
    raw = svc["spec"]["serveConfigV2"]
    assert isinstance(raw, str), "serveConfigV2 must be a YAML string (block scalar)"
    return path, yaml.safe_load(raw)


def test_rayservice_serve_config_equals_deploy_serve_yaml():
    path, cfg = _serve_config()
    deploy = yaml.safe_load((REPO / "deploy" / "serve.yaml").read_text())
    assert cfg["applications"] == deploy["applications"], (
        f"{path}: serveConfigV2.applications differ from deploy/serve.yaml; copy them over"
    )
    assert set(cfg) <= SERVE_TOP_KEYS, f"unknown serve config keys {set(cfg) - SERVE_TOP_KEYS}"
    assert cfg.get("http_options", {}).get("host", "0.0.0.0") == "0.0.0.0", (
        "on Kubernetes the Serve proxy must listen on 0.0.0.0"
    )


def test_rayservice_import_paths_resolve_and_args_validate():
    path, cfg = _serve_config()
    for app in cfg["applications"]:
        module, _, attr = app["import_path"].partition(":")
        if not attr:
            module, _, attr = module.rpartition(".")
        parts = module.split(".")
        assert parts[0] == "distill", f"{path}: import_path outside distill: {module}"
        f = REPO / "platform" / Path(*parts).with_suffix(".py")
        assert f.is_file(), f"{path}: {module} is not a module under platform/"
        tree = ast.parse(f.read_text())
        top = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        top |= {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        assert attr in top, f"{path}: {module} defines no {attr}"
        if app["import_path"] == "distill.serve.app:build_app":
            from distill.serve.config import ServeArgs

            args = ServeArgs.model_validate(app["args"])
            for role in ("student", "teacher"):
                ref = getattr(args, role).model
                if ref.startswith("runs/"):  # relative to the pods' workingDir
                    _assert_runs_on_pvc(ref)


def _assert_runs_on_pvc(ref: str) -> None:
    ((_, svc),) = _of_kind("RayService")
    for pod in _pod_specs(svc["spec"]["rayClusterConfig"]):
        for c in pod["containers"]:
            wd = c.get("workingDir")
            assert wd, f"{c['name']}: set workingDir so {ref} resolves"
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert f"{wd}/runs" in mounts, f"{c['name']}: {ref} is not on the runs volume"


def test_dockerfile_base_matches_ray_version():
    text = (K8S / "Dockerfile").read_text()
    m = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)", text, re.MULTILINE)
    assert m and m.group(1) == version("ray")
    images = {
        c["image"]
        for _, spec in _cluster_specs()
        for pod in _pod_specs(spec)
        for c in pod["containers"]
    }
    assert len(images) == 1, f"every Ray pod should run the distill image: {images}"
    assert all(f"-t {img}" in text for img in images), "Dockerfile's build command tags the image"
