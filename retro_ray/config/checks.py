"""The error type and the small checks every section's ``validate`` uses."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. The message names the key."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: bad value {value!r}; expected {allowed}")


def positive(value: float, key: str) -> None:
    require(value > 0, key, value, "a number > 0")


def in_range(value: float, key: str, low: float, high: float) -> None:
    require(low <= value <= high, key, value, f"a number in [{low}, {high}]")
