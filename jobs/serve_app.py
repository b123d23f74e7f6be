"""A Ray Serve application builder for config-driven deploys (KubeRay RayService, ``serve deploy``).

``retro-ray serve`` deploys imperatively; a RayService instead names an import path in its
``serveConfigV2``. This builder does what ``retro_ray.serve.launch.start`` does before
``serve.run`` (the alias controller actor, detached and found by name so that a redeploy reuses
it), and returns the bound deployment:

    applications:
      - name: retro
        import_path: jobs.serve_app:build
        args: {config: configs/serve.yaml, set: ["serve.backend=vllm", "serve.replica_gpus=1"]}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class BuildArgs(BaseModel):
    """The ``args`` of the application in the Serve config."""

    config: str | None = None
    """YAML config file, relative to the working directory (None: defaults)."""
    set: list[str] = Field(default_factory=list)
    """Dotted ``key=value`` overrides, as ``--set`` takes them."""


def build(args: dict[str, Any]) -> Any:
    """Serve's application builder: returns the ``RetroServer`` deployment, bound."""
    import ray

    from retro_ray.run_config import load_run_config
    from retro_ray.serve.app import RetroServer
    from retro_ray.serve.launch import (
        NAMESPACE,
        ControllerService,
        deployment_options,
        replica_settings,
        resolve_model_dir,
    )

    parsed = BuildArgs.model_validate(args)
    cfg = load_run_config(parsed.config, parsed.set)
    s = cfg.serve
    model_dir = resolve_model_dir(cfg)
    settings = replica_settings(cfg, model_dir)
    controller = (
        ray.remote(num_cpus=0, max_concurrency=1000)(ControllerService)
        .options(
            name=settings.controller_name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        )
        .remote(settings.registry_root, str(model_dir), cfg.registry.name, s.model_name, s)
    )
    ray.get(controller.start.remote())
    options = deployment_options(s)
    return RetroServer.options(**options).bind(settings)
