"""The error type and the small checks every section's ``validate`` uses."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. The message names the key."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: bad value {value!r}; expected {allowed}")


NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
"""What a run name may be, matched in full: it becomes a directory and a hive partition
(``run=<name>``), where ``/`` nests, ``=`` splits, ``%41`` decodes to ``A`` (the run would then read
another run's data, or none) and a leading ``.`` or ``_`` hides the files from every reader."""

_NAME = re.compile(NAME_RULE)


def is_name(value: str) -> bool:
    """``value`` matches ``NAME_RULE`` in full (``re.fullmatch``: ``$`` would accept ``"a\n"``)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(value: str, key: str) -> None:
    require(
        is_name(value),
        key,
        value,
        f"a name matching {NAME_RULE} in full: letters, digits, '_', '.', '-', starting with a "
        "letter or digit (it names a directory and a Parquet partition run=<name>)",
    )


def positive(value: float, key: str) -> None:
    require(value > 0, key, value, "a number > 0")


def in_range(value: float, key: str, low: float, high: float) -> None:
    require(low <= value <= high, key, value, f"a number in [{low}, {high}]")


def finite_numbers(node: Any, key: str) -> None:
    """Every float in ``node`` (a section, its nested sections, mappings and lists) is finite.

    YAML reads ``.nan`` and ``.inf`` as floats. Range checks let infinity through (``inf > 0``)
    and fields without one let NaN through too; one such value turns a learning rate, a margin or
    a price into NaN everywhere downstream, so it is refused here, by name, for every field."""
    if isinstance(node, float):
        require(math.isfinite(node), key, node, "a finite number (not nan or inf)")
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            finite_numbers(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, Mapping):
        for name, value in node.items():
            finite_numbers(value, f"{key}.{name}")
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            finite_numbers(value, f"{key}[{index}]")
