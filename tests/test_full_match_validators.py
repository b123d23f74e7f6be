"""Validators match in full: a pattern ending in ``$`` also accepts the same text followed by a
newline (``re.match(r"^a$", "a\n")`` matches), so names, model names, tensor names and task ids
with a trailing newline used to pass."""

from __future__ import annotations

import pytest

from retro_ray.envs.base import Task
from retro_ray.envs.benchmarks.webshop import WebShopEnv
from retro_ray.registry.validation import (
    AdapterRejected,
    _check_tensor,
    check_adapter_name,
    is_valid_model_name,
)


def test_names_with_a_trailing_newline_are_refused() -> None:
    assert check_adapter_name("retro") == "retro"
    with pytest.raises(ValueError, match="bad adapter name"):
        check_adapter_name("retro\n")
    assert is_valid_model_name("retro@3") and is_valid_model_name("prod")
    assert not is_valid_model_name("retro@3\n") and not is_valid_model_name("prod\n")


def test_a_tensor_name_with_a_trailing_newline_is_not_a_lora_weight() -> None:
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight\n"
    with pytest.raises(AdapterRejected, match="unexpected tensor"):
        _check_tensor(name, None, None, 4, {"q_proj"})  # type: ignore[arg-type]


def test_a_webshop_goal_id_with_a_trailing_newline_is_refused() -> None:
    env = WebShopEnv()  # no request is made: the id is checked first
    with pytest.raises(ValueError, match="not a webshop goal"):
        env.reset(Task("webshop", "fixed_3\n", "test"))
