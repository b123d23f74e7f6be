"""Loading a run's configuration: the tree's own checks, then the environment it names.

``retro_ray.config`` checks each section by itself (keys, types, ranges, values that must agree)
and imports nothing above it. Whether ``env.name`` names an environment and ``env.options``
build that environment's options is for the environment registry to say
(``retro_ray.envs.registry``), which itself reads the config. This loader sits above both, so
neither imports the other's caller: every command loads its configuration here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from retro_ray.config import Config, load_config
from retro_ray.envs.registry import validate_env_config


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The YAML file (or the defaults) with ``a.b=value`` overrides, every section checked
    (``retro_ray.config.load_config``), then the environment: an unknown ``env.name`` or bad
    ``env.options`` raise ``ConfigError`` naming the key, before any work starts."""
    cfg = load_config(path, overrides)
    validate_env_config(cfg.env)
    return cfg
