"""The cluster launcher YAML, the KubeRay manifests and the job runtime environments validate
against their schemas: the launcher's schema shipped in the ``ray`` wheel, and the
``openAPIV3Schema`` of KubeRay's CRDs (``../shared/data/kuberay/``).

CRD schemas leave ``additionalProperties`` open, and Kubernetes silently prunes unknown fields,
so a misspelt field would pass a plain validation and then do nothing. The schemas are therefore
made strict first (unknown fields rejected, except where the CRD preserves them), as
``kubectl apply --validate=strict`` does.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO.parent / "shared" / "data" / "kuberay"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
CRDS = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
MANIFESTS = {
    "RayJob": REPO / "cluster" / "kuberay" / "rayjob-train.yaml",
    "RayService": REPO / "cluster" / "kuberay" / "rayservice.yaml",
}


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI schema in which objects with declared ``properties`` reject others."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(kind: str, version: str) -> dict[str, Any]:
    crd = yaml.load((KUBERAY / CRDS[kind]).read_text(), Loader=yaml.CSafeLoader)
    assert crd["spec"]["names"]["kind"] == kind
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strict(found["schema"]["openAPIV3Schema"])


def validate(instance: Any, schema: dict[str, Any]) -> None:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls(schema).validate(instance)


# --------------------------------------------------------------------------------------------
# Ray cluster launcher
# --------------------------------------------------------------------------------------------


def launcher() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())


def test_cluster_launcher_yaml_validates() -> None:
    cfg = launcher()
    validate(cfg, json.loads(RAY_SCHEMA.read_text()))
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0  # CPU head
    gpu_roles = {t["labels"]["retro_ray/role"] for t in types.values() if t["resources"].get("GPU")}
    assert gpu_roles == {"serve", "learner"}
    assert all(
        t["max_workers"] >= t.get("min_workers", 0) for t in types.values() if "max_workers" in t
    )


def test_cluster_launcher_schema_rejects_bad_values() -> None:
    schema = json.loads(RAY_SCHEMA.read_text())
    bad = launcher()
    bad["available_node_types"]["gpu_serve"]["resources"]["GPU"] = 0.5  # integers only
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, schema)
    bad = launcher()
    bad["head_start_ray_command"] = bad.pop("head_start_ray_commands")  # misspelt key
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, schema)


# --------------------------------------------------------------------------------------------
# KubeRay
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_kuberay_manifest_validates_against_crd(kind: str) -> None:
    manifest = yaml.safe_load(MANIFESTS[kind].read_text())
    assert manifest["kind"] == kind
    group, version = manifest["apiVersion"].split("/")
    assert group == "ray.io"
    schema = crd_schema(kind, version)
    validate(manifest["spec"], schema["properties"]["spec"])
    validate(manifest, schema)


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_strict_crd_schema_rejects_a_misspelt_field(kind: str) -> None:
    manifest = yaml.safe_load(MANIFESTS[kind].read_text())
    spec = manifest["spec"].get("rayClusterSpec") or manifest["spec"]["rayClusterConfig"]
    bad = copy.deepcopy(manifest)
    bad_spec = bad["spec"].get("rayClusterSpec") or bad["spec"]["rayClusterConfig"]
    bad_spec["workerGroupSpec"] = bad_spec.pop("workerGroupSpecs")
    assert spec is not bad_spec
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, crd_schema(kind, manifest["apiVersion"].split("/")[1]))


def test_rayjob_entrypoint_and_runtime_env_are_real() -> None:
    spec = yaml.safe_load(MANIFESTS["RayJob"].read_text())["spec"]
    words = spec["entrypoint"].split()
    assert words[0] == "python" and (REPO / words[1]).is_file()
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/retro_ray"  # the checkout in the image
    # Ray's own validation of the fields (it checks that a local working_dir exists: ours does).
    ray.runtime_env.RuntimeEnv(**{**runtime_env, "working_dir": str(REPO)})
    assert runtime_env["env_vars"]["OMP_NUM_THREADS"] == "1"
    groups = {g["groupName"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    assert groups == {"gpu-serve", "gpu-learner"}


def test_rayservice_serve_config_builds_a_valid_config() -> None:
    """The ``serveConfigV2`` parses as Serve's deploy schema, its import path resolves, and its
    arguments are a valid retro_ray configuration."""
    from ray.serve.schema import ServeDeploySchema

    from jobs.serve_app import BuildArgs, build
    from retro_ray.config import load_config
    from retro_ray.serve.launch import deployment_options

    spec = yaml.safe_load(MANIFESTS["RayService"].read_text())["spec"]
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(spec["serveConfigV2"]))
    (app,) = serve_config.applications
    assert app.import_path == "jobs.serve_app:build" and callable(build)
    args = BuildArgs.model_validate(app.args)
    cfg = load_config(args.config, args.set)
    assert cfg.serve.backend == "vllm" and cfg.serve.replica_gpus == 1
    assert deployment_options(cfg.serve)["ray_actor_options"]["num_gpus"] == 1


# --------------------------------------------------------------------------------------------
# Job runtime environments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["eval", "train", "sweep"])
def test_job_runtime_env_is_valid(job: str) -> None:
    runtime_env = yaml.safe_load((REPO / "jobs" / "runtime_env" / f"{job}.yaml").read_text())
    ray.runtime_env.RuntimeEnv(**runtime_env)
    assert runtime_env["working_dir"] == "."
    assert "pip" not in runtime_env  # nodes are provisioned by their image (offline-safe)
    assert runtime_env["env_vars"]["OMP_NUM_THREADS"] == "1"
    assert (REPO / "jobs" / f"{job}.py").is_file()


# --------------------------------------------------------------------------------------------
# Security: Ray's token authentication on every cluster, tokens only from files or Secrets
# --------------------------------------------------------------------------------------------

RAY_TOKEN_FILE = "~/.ray/auth_token"  # where `ray get-auth-token --generate` writes it
RAY_AUTH_SECRET = "retro-ray-auth"


def test_launcher_turns_on_ray_token_auth_with_the_token_from_a_file() -> None:
    """Every container runs with ``RAY_AUTH_MODE=token`` and reads the token from a file that
    ``file_mounts`` copies from the user's machine; the token itself is nowhere in the config,
    and the dashboard and job API listen on the head's loopback only (``ray dashboard``)."""
    cfg = launcher()
    run_options = cfg["docker"]["run_options"]
    assert "--env RAY_AUTH_MODE=token" in run_options
    (token_path,) = [
        option.split("=", 1)[1]
        for option in run_options
        if option.startswith("--env RAY_AUTH_TOKEN_PATH=")
    ]
    assert cfg["file_mounts"][token_path] == RAY_TOKEN_FILE
    text = (REPO / "cluster" / "ray-cluster.yaml").read_text()
    assert "RAY_AUTH_TOKEN=" not in text and "RAY_AUTH_MODE=disabled" not in text
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in text  # nothing binds every interface


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"].get("rayClusterSpec") or manifest["spec"]["rayClusterConfig"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_kuberay_cluster_requires_ray_token_auth_from_a_secret(kind: str) -> None:
    """``authOptions`` turns token authentication on for every Ray container (and the job
    submitter) with the token from a Secret; no container sets a token or key inline, turns
    authentication off, or exposes Ray Client (unused: jobs go through the job API)."""
    spec = cluster_spec(yaml.safe_load(MANIFESTS[kind].read_text()))
    assert spec["authOptions"] == {"mode": "token", "secretName": RAY_AUTH_SECRET}
    for container in containers(spec):
        for env in container.get("env", []):
            assert env["name"] not in {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}  # authOptions' job
            if any(word in env["name"] for word in ("TOKEN", "KEY", "SECRET")):
                assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"], env
        assert "client" not in {port["name"] for port in container.get("ports", [])}


def test_rayservice_serves_beyond_loopback_only_with_its_token(monkeypatch) -> None:
    """The RayService binds the Serve app on 0.0.0.0, so every container gets the app's token
    variable from a Secret; without it the app refuses to start (``InsecureBind``)."""
    from jobs.serve_app import BuildArgs
    from retro_ray.config import load_config
    from retro_ray.serve.guard import InsecureBind, serve_token_sha256

    spec = yaml.safe_load(MANIFESTS["RayService"].read_text())["spec"]
    (app,) = yaml.safe_load(spec["serveConfigV2"])["applications"]
    args = BuildArgs.model_validate(app["args"])
    serve = load_config(args.config, args.set).serve
    assert serve.host == "0.0.0.0"
    for container in containers(cluster_spec({"spec": spec})):
        (token,) = [e for e in container["env"] if e["name"] == serve.api_key_env]
        assert token["valueFrom"]["secretKeyRef"] == {"name": "retro-ray-serve", "key": "token"}
    monkeypatch.delenv(serve.api_key_env, raising=False)
    with pytest.raises(InsecureBind, match=serve.api_key_env):
        serve_token_sha256(serve.host, serve.api_key_env)
    monkeypatch.setenv(serve.api_key_env, "from-the-secret\n")
    assert serve_token_sha256(serve.host, serve.api_key_env)
