"""Sweep grids: ``--grid key=v1,v2`` options expanded into points, each a set of ``--set`` overrides.

A point is an ordered mapping from dotted config keys to values; its overrides are rendered as
JSON (a subset of YAML), which ``retro_ray.config.apply_override`` parses back to the same value.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

Point = dict[str, Any]

# Keys that only change the random draw: a sweep reports means over them per other setting.
SEED_KEYS = ("run.seed", "env.seed")


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["run.seed=0,1", "learner.lr=[1e-3, 2e-3]"]`` -> ``{"run.seed": [0, 1], ...}``.

    The right-hand side is a YAML list, or values separated by commas (each parsed as YAML).
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ValueError(f"grid {item!r} must look like key.path=v1,v2")
        if key in grid:
            raise ValueError(f"grid key {key!r} given twice")
        parsed = yaml.safe_load(raw)
        if isinstance(parsed, list):
            values = parsed
        else:
            values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
        if not values:
            raise ValueError(f"grid {item!r} has no values")
        grid[key] = values
    return grid


def expand(grid: Mapping[str, Sequence[Any]]) -> list[Point]:
    """Every combination (the cartesian product) in a stable order; one empty point if no grid."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def overrides(point: Mapping[str, Any]) -> list[str]:
    """``--set`` values for one point: ``key=<JSON of the value>``."""
    return [f"{key}={json.dumps(value)}" for key, value in point.items()]


def non_seed_keys(keys: Sequence[str]) -> list[str]:
    """The swept keys that are hyperparameters (not seeds)."""
    return [k for k in keys if k not in SEED_KEYS]
