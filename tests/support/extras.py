"""Guards for tests that need an optional extra (``vllm`` from ``cpu``/``gpu``, ``alfworld``).

A plain ``pytest.importorskip`` turns a broken install into a skip, so a suite that should run
those tests stays green without running them. ``RETRO_RAY_REQUIRE_EXTRAS`` (a comma list of the
extras installed, set by the Makefile's test targets, which install them) makes a missing or
broken extra FAIL the test instead. Without it (a user's partial install) the test skips, as
before.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_ENV = "RETRO_RAY_REQUIRE_EXTRAS"
MODULE_OF_EXTRA = {"cpu": "vllm", "gpu": "vllm", "alfworld": "alfworld"}
"""The module a test imports for each extra that has one (pyproject's optional-dependencies)."""
EXTRAS_WITHOUT_GUARD = frozenset({"dev", "bench"})
"""Extras named in ``EXTRAS`` that no test guard imports (accepted in the variable)."""


def required_extras() -> frozenset[str]:
    """The extras ``RETRO_RAY_REQUIRE_EXTRAS`` names; an unknown name is an error (a typo would
    silently let the tests skip again)."""
    names = {n.strip() for n in os.environ.get(REQUIRE_ENV, "").split(",") if n.strip()}
    unknown = names - MODULE_OF_EXTRA.keys() - EXTRAS_WITHOUT_GUARD
    if unknown:
        known = ", ".join(sorted(MODULE_OF_EXTRA.keys() | EXTRAS_WITHOUT_GUARD))
        raise pytest.UsageError(
            f"{REQUIRE_ENV} names unknown extras {sorted(unknown)}; known: {known}"
        )
    return frozenset(names)


def require_module(module: str, extras: tuple[str, ...]) -> ModuleType:
    """Import ``module`` (provided by any of ``extras``). Fails the test when one of ``extras``
    is required and the import fails for any reason; skips when none is required and the module
    is not installed."""
    required = sorted(required_extras() & set(extras))
    try:
        return importlib.import_module(module)
    except Exception as exc:
        if required:
            pytest.fail(
                f"`import {module}` failed although {REQUIRE_ENV} requires the "
                f"{'/'.join(required)} extra: {type(exc).__name__}: {exc}. Reinstall it "
                f"(pip install -e '.[{required[0]}]', or make install) or drop it from "
                f"{REQUIRE_ENV} (make EXTRAS=...)",
                pytrace=False,
            )
        if isinstance(exc, ImportError):
            pytest.skip(f"{module} is not installed (optional extra {'/'.join(extras)})")
        raise


def require_vllm() -> ModuleType:
    return require_module("vllm", ("cpu", "gpu"))


def require_alfworld() -> ModuleType:
    return require_module("alfworld", ("alfworld",))
