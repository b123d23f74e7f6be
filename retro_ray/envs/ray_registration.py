"""Ray edge: register every environment with Ray's env registry, so that any Ray worker (rollout
actors, RLlib) builds it by name: ``retro_ray/<name>``."""

from __future__ import annotations

from typing import Any

from retro_ray.envs.gym_env import GymTextEnv
from retro_ray.envs.registry import env_names


def ray_env_name(name: str) -> str:
    return f"retro_ray/{name}"


def register_ray_envs(names: list[str] | None = None) -> list[str]:
    """Register the named environments (default: every built-in); returns the Ray names. Call it
    on the driver after ``ray.init``; the registry lives in the cluster, workers read it."""
    from ray.tune.registry import register_env

    registered = []
    for name in names or env_names():

        def creator(env_config: dict[str, Any], _name: str = name) -> GymTextEnv:
            return GymTextEnv({**dict(env_config or {}), "name": _name})

        register_env(ray_env_name(name), creator)
        registered.append(ray_env_name(name))
    return registered


def make_registered_env(ray_name: str, env_config: dict[str, Any] | None = None) -> GymTextEnv:
    """Build an environment from Ray's registry (works in any worker of the cluster)."""
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if not _global_registry.contains(ENV_CREATOR, ray_name):
        raise ValueError(f"{ray_name!r} is not registered with Ray; call register_ray_envs() first")
    return _global_registry.get(ENV_CREATOR, ray_name)(env_config or {})
