"""Environments by name.

Built-in environments register themselves here. A user's own environment needs no registration:
name it by import path, ``my_pkg.envs:MyEnv``, in ``env.name``. Its class is built as
``MyEnv(**env.options)`` (plus ``data_path=...`` when set) and must implement the ``TextEnv``
protocol (``reset(task)``, ``step(action)``) and a ``tasks(split, n, seed)`` method returning
``Task`` records. The reward it returns in ``StepResult.info["score"]`` is whatever the business
measures (a KPI); ``info["won"]`` says the task is solved.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retro_ray.envs.base import TextEnv

if TYPE_CHECKING:
    from retro_ray.config import EnvConfig


@dataclass(frozen=True)
class EnvSpec:
    name: str
    factory: Callable[..., TextEnv]
    options_cls: type | None = None  # dataclass of the environment's options (difficulty knobs)
    description: str = ""


_REGISTRY: dict[str, EnvSpec] = {}


def register(spec: EnvSpec) -> EnvSpec:
    _REGISTRY[spec.name] = spec
    return spec


def env_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_spec(name: str) -> EnvSpec:
    """The spec of a registered name, or of a ``pkg.module:Class`` import path."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(
                f"environment {name!r}: cannot import module {module_name!r} ({exc}); "
                "check the import path and that the package is installed"
            ) from exc
        factory = getattr(module, attr, None)
        if factory is None:
            raise ValueError(f"environment {name!r}: module {module_name!r} has no {attr!r}")
        return EnvSpec(name=name, factory=factory, options_cls=getattr(factory, "Options", None))
    raise ValueError(
        f"unknown environment {name!r}; registered: {', '.join(sorted(_REGISTRY))} "
        "(or give a class by import path, pkg.module:Class)"
    )


def build_options(spec: EnvSpec, options: Mapping[str, Any], key: str = "env.options") -> Any:
    """The environment's options dataclass built (and checked) from a mapping."""
    if spec.options_cls is None:
        return dict(options)
    from retro_ray.config import ConfigError, from_dict

    opts = from_dict(spec.options_cls, options, prefix=f"{key}.")
    check = getattr(opts, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    return opts


def make_env(
    name: str, options: Mapping[str, Any] | None = None, data_path: str | None = None
) -> TextEnv:
    """Build an environment by registered name or import path."""
    spec = get_spec(name)
    opts = build_options(spec, options or {})
    kwargs: dict[str, Any] = {}
    if data_path is not None:
        kwargs["data_path"] = data_path
    if dataclasses.is_dataclass(opts):
        return spec.factory(opts, **kwargs)
    return spec.factory(**opts, **kwargs)


def make_env_from_config(cfg: EnvConfig) -> TextEnv:
    return make_env(cfg.name, cfg.options, cfg.data_path)


def validate_env_config(cfg: EnvConfig) -> None:
    """Fail early, naming the key, on an unknown environment or bad options."""
    from retro_ray.config import ConfigError

    try:
        spec = get_spec(cfg.name)
    except ValueError as exc:
        raise ConfigError(f"env.name: {exc}") from exc
    build_options(spec, cfg.options)


def _load_builtins() -> None:
    # Importing the packages runs each environment module's register(...) call.
    import retro_ray.envs.benchmarks
    import retro_ray.envs.builtin  # noqa: F401
