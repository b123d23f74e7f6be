"""The optional-extra guard: where ``RETRO_RAY_REQUIRE_EXTRAS`` names an extra, a module of it
that does not import fails the test; elsewhere it skips, as ``pytest.importorskip`` did."""

from __future__ import annotations

import pytest

from tests.support.extras import REQUIRE_ENV, require_module, required_extras

MISSING = "retro_ray_no_such_module_for_the_guard_test"


def test_a_required_extra_that_does_not_import_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "cpu,alfworld,dev")
    with pytest.raises(pytest.fail.Exception, match=f"`import {MISSING}` failed.*alfworld"):
        require_module(MISSING, ("alfworld",))


def test_an_extra_not_required_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "cpu,dev")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_module(MISSING, ("alfworld",))
    monkeypatch.delenv(REQUIRE_ENV)
    with pytest.raises(pytest.skip.Exception):
        require_module(MISSING, ("alfworld",))


def test_a_broken_install_fails_when_required(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """An extra installed but broken (its import raises something other than ImportError, as a
    mismatched torch build does) fails when required, and is not hidden as a skip otherwise."""
    (tmp_path / "retro_ray_broken_extra.py").write_text("raise RuntimeError('ABI mismatch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(REQUIRE_ENV, "cpu")
    with pytest.raises(pytest.fail.Exception, match="RuntimeError: ABI mismatch"):
        require_module("retro_ray_broken_extra", ("cpu", "gpu"))
    monkeypatch.delenv(REQUIRE_ENV)
    with pytest.raises(RuntimeError, match="ABI mismatch"):
        require_module("retro_ray_broken_extra", ("cpu", "gpu"))


def test_an_installed_extra_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "alfworld")
    assert require_module("json", ("alfworld",)).__name__ == "json"


def test_unknown_extra_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "cpu,alfwrold")
    with pytest.raises(pytest.UsageError, match=r"unknown extras \['alfwrold'\]"):
        required_extras()
