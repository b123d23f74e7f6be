"""Start and stop the serving application: the controller actor, then the Serve deployment.

The controller is one Ray actor per application (named ``retro_ray_controller:<app>``): it holds
the served alias table, watches the registry and runs each two-phase swap. Replicas find it by
name. Everything here is Ray wiring; the work is in ``controller.py`` and ``runtime.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retro_ray.config import Config, ServeConfig
from retro_ray.registry import AdapterRegistry
from retro_ray.serve.controller import AliasController, RegistryWatcher, Resolution, SwapResult
from retro_ray.serve.guard import ReplicaSettings, serve_token_sha256

logger = logging.getLogger(__name__)
NAMESPACE = "retro_ray"


class ControllerService:
    """The controller plus its registry watcher: the body of the controller actor."""

    def __init__(
        self,
        registry_root: str,
        model_dir: str,
        adapter_name: str,
        base_name: str,
        cfg: ServeConfig,
    ) -> None:
        self.registry = registry = AdapterRegistry(registry_root, model_dir, adapter_name)
        self.controller = AliasController(adapter_name, base_name, cfg.swap_timeout_s)
        self.watcher = RegistryWatcher(self.controller, registry.state, cfg.poll_interval_s)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, object]:
        """Serve the registry's current table (no replicas yet: it applies at once), then watch."""
        await self.watcher.step()
        if self._task is None:
            self._task = asyncio.create_task(self.watcher.run())
        return self.controller.table()

    def register(self, replica_id: str) -> tuple[int, list[int]]:
        return self.controller.register(replica_id)

    async def wait_for_work(
        self, replica_id: str, generation: int, timeout_s: float
    ) -> tuple[int, list[int]]:
        return await self.controller.wait_for_work(replica_id, generation, timeout_s)

    async def report(self, replica_id: str, loaded: list[int], failed: dict[int, str]) -> None:
        await self.controller.report(replica_id, loaded, failed)

    def unregister(self, replica_id: str) -> None:
        self.controller.unregister(replica_id)

    def lookup(self, model: str) -> Resolution | None:
        """On a miss for ``name@N``, list the registry once more: a version published a moment
        ago is servable before the next poll (the gate asks for it right after publish)."""
        found = self.controller.lookup(model)
        if found is None and "@" in model:
            self.controller.known_versions = set(self.registry.versions())
            found = self.controller.lookup(model)
        return found

    def table(self) -> dict[str, object]:
        return self.controller.table()

    def swaps(self) -> list[SwapResult]:
        return list(self.controller.swaps)


def resolve_model_dir(cfg: Config) -> Path:
    if cfg.serve.model_dir:
        return Path(cfg.serve.model_dir)
    from retro_ray.zoo.build import build_zoo

    return build_zoo(cfg.serve.zoo_recipe).retrospective_dir


def replica_settings(cfg: Config, model_dir: Path, insecure: bool = False) -> ReplicaSettings:
    """What every replica is told. Raises ``InsecureBind`` for a non-loopback ``serve.host``
    without a token, unless ``insecure`` (see ``guard.serve_token_sha256``)."""
    s = cfg.serve
    context = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    return ReplicaSettings(
        backend=s.backend,
        model_dir=str(model_dir),
        model_name=s.model_name,
        adapter_name=cfg.registry.name,
        registry_root=str(cfg.registry_dir.resolve()),
        controller_name=f"retro_ray_controller:{s.app_name}",
        namespace=NAMESPACE,
        max_lora_rank=cfg.registry.max_lora_rank,
        max_loras=s.max_loras,
        max_tokens_limit=s.max_tokens_limit,
        max_request_bytes=s.max_request_bytes,
        max_context=min(context, s.max_model_len or context),
        token_sha256=serve_token_sha256(s.host, s.api_key_env, insecure),
        cpu_threads=s.cpu_threads,
        kv_cache_gib=s.kv_cache_gib,
        gpu_memory_utilization=s.gpu_memory_utilization,
        dtype=s.dtype,
        max_model_len=s.max_model_len,
        instruction=cfg.reflector.instruction,
        trajectory_max_chars=cfg.reflector.trajectory_max_chars,
        reflection_max_chars=cfg.reflector.max_chars,
    )


@dataclass
class RunningApp:
    app_name: str
    url: str  # root of the OpenAI API, ending in /v1
    controller: Any  # Ray actor handle of ControllerService
    registry: AdapterRegistry


def start(cfg: Config, insecure: bool = False) -> RunningApp:
    """Deploy the application on the connected Ray cluster (``ray.init`` first) and return once
    every replica is up and warm. ``insecure`` allows a non-loopback bind without a token."""
    from ray import serve

    from retro_ray.serve.app import RetroServer

    s = cfg.serve
    model_dir = resolve_model_dir(cfg)
    settings = replica_settings(cfg, model_dir, insecure)
    registry = AdapterRegistry(
        settings.registry_root,
        model_dir,
        cfg.registry.name,
        cfg.registry.max_lora_rank,
        run=cfg.run.name,
        shared=cfg.registry.shared,
    )
    controller = start_controller(settings, s)
    serve.start(http_options={"host": s.host, "port": s.port})
    options = deployment_options(s)
    app = RetroServer.options(**options).bind(settings)
    serve.run(app, name=s.app_name, route_prefix=s.route_prefix, blocking=False)
    prefix = s.route_prefix.rstrip("/")
    url = f"http://{s.host}:{s.port}{prefix}/v1"
    return RunningApp(s.app_name, url, controller, registry)


def start_controller(settings: ReplicaSettings, s: ServeConfig) -> Any:
    """The app's controller actor, started and serving the registry's table. It runs on this
    (the driver's) node, hard affinity: the driver owns it, so it dies with the driver anyway,
    and on a worker node the loss of that node would take it too, leaving every replica without
    the controller its requests resolve models at, while the driver lives on."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = ray.get_runtime_context().get_node_id()
    actor_cls = ray.remote(num_cpus=0, max_concurrency=1000)(ControllerService)
    controller = actor_cls.options(
        name=settings.controller_name,
        namespace=NAMESPACE,
        scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False),
    ).remote(settings.registry_root, settings.model_dir, settings.adapter_name, s.model_name, s)
    ray.get(controller.start.remote())
    return controller


def deployment_options(s: ServeConfig) -> dict[str, Any]:
    """Serve deployment options of the replicas: resources, threads, replicas or autoscaling."""
    actor_options: dict[str, Any] = {
        "num_cpus": s.replica_cpus,
        "runtime_env": {
            "env_vars": {
                "OMP_NUM_THREADS": str(s.cpu_threads),
                "VLLM_LOGGING_LEVEL": s.engine_log_level,
            }
        },
    }
    if s.replica_gpus:
        actor_options["num_gpus"] = s.replica_gpus
    options: dict[str, Any] = {
        "name": f"{s.app_name}-server",
        "max_ongoing_requests": s.max_ongoing_requests,
        "ray_actor_options": actor_options,
        "logging_config": {"enable_access_log": s.access_log},
    }
    if s.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = s.num_replicas
    return options


def stop(app: RunningApp) -> None:
    """Delete the Serve application and its controller (the cluster and the proxy stay)."""
    import ray
    from ray import serve

    serve.delete(app.app_name)
    ray.kill(app.controller)
    name = f"retro_ray_controller:{app.app_name}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # free the name: a restart registers it again
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.1)


def config_for_serving(cfg: Config, **serve_overrides: Any) -> Config:
    """``cfg`` with some ``serve`` fields replaced (tests and benchmarks)."""
    return dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, **serve_overrides))
