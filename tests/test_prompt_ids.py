"""The engine's ids travel from the sampler to the loss (issue 16 item 5): the experience log keeps
the prompt's ids as the engine saw them and the integer adapter version; the learner's batch uses
those ids as they are, and needs a tokenizer only for rows logged without them (older logs)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from retro_ray.agents.build import resolve_prompt_format
from retro_ray.config import LearnerConfig, ReflectorConfig
from retro_ray.driver.loop import adapter_versions
from retro_ray.learner.offline import group_batch, load_groups
from retro_ray.rollout.experience import SCHEMA_VERSION, ExperienceLog, ExperienceRow


def rows(prompt_ids: list[int] | None) -> list[ExperienceRow]:
    return [
        ExperienceRow(
            task_id="t",
            split="train",
            env="lookup",
            mode="train",
            trial=1,
            sample=i,
            won=False,
            return_after=float(i),
            return_before=0.0,
            reward=float(i),
            prompt="Reflect.\nTask\nReflection:",
            reflection=f"try {i}",
            reflection_token_ids=[40 + i, 41],
            reflection_logprobs=[-1.0, -2.0],
            reflection_prompt_token_ids=prompt_ids,
            adapter_version="retro@3",
            adapter_version_number=3 if prompt_ids else None,
        )
        for i in range(2)
    ]


def test_the_log_keeps_prompt_ids_and_the_integer_version(tmp_path: Path) -> None:
    assert SCHEMA_VERSION == 3
    log = ExperienceLog(tmp_path)
    log.write_episode("run", 0, "t", rows([7, 8, 9]))
    table = log.read("run", 0)
    assert table.column("reflection_prompt_token_ids").to_pylist() == [[7, 8, 9]] * 2
    assert table.column("adapter_version_number").to_pylist() == [3, 3]
    assert adapter_versions(table, "retro") == [3]
    (group,) = load_groups(table)
    assert group.prompt_ids == [7, 8, 9]
    # No tokenizer: the batch is made of the logged ids exactly (the prompt text is not read).
    batch, _ = group_batch([group], None, None, LearnerConfig(), loss_name="ppo_clip")
    assert batch.input_ids[:, :5].tolist() == [[7, 8, 9, 40, 41], [7, 8, 9, 41, 41]]
    assert batch.loss_mask[:, 3:].tolist() == [[1, 1], [1, 1]]


def test_rows_without_prompt_ids_need_a_tokenizer(tmp_path: Path) -> None:
    log = ExperienceLog(tmp_path)
    log.write_episode("run", 0, "t", rows(None))
    table = log.read("run", 0)
    assert adapter_versions(table, "retro") == [3]  # parsed from the name, as in older logs
    (group,) = load_groups(table)
    assert group.prompt_ids is None
    with pytest.raises(ValueError, match=r"schema 3.*tokenizer"):
        group_batch([group], None, None, LearnerConfig(), loss_name="ppo_clip")

    class Chars:  # a tokenizer: one id per character
        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            return {"input_ids": [ord(c) for c in text]}

    batch, _ = group_batch([group], Chars(), 0, LearnerConfig(), loss_name="ppo_clip")
    prompt = [ord(c) for c in group.prompt]
    assert batch.input_ids[0, : len(prompt)].tolist() == prompt


def test_a_group_whose_prompt_ids_differ_is_refused() -> None:
    first, second = rows([1, 2])
    second.reflection_prompt_token_ids = [1, 3]
    table = pa.Table.from_pylist(
        [{**r.__dict__, "run": "run", "iteration": 0} for r in (first, second)]
    )
    with pytest.raises(ValueError, match="different prompt ids"):
        load_groups(table)


def test_prompt_format_auto_follows_the_tokenizer(tiny_architectures, zoo_free_dir) -> None:
    auto = ReflectorConfig()
    assert resolve_prompt_format(auto, model_dir=str(tiny_architectures["qwen2"])) == "chat"
    assert resolve_prompt_format(auto, model_dir=str(zoo_free_dir)) == "completion"
    assert resolve_prompt_format(auto) == "completion"  # nothing to read: the zoo's default
    forced = ReflectorConfig(prompt_format="completion")
    assert resolve_prompt_format(forced, model_dir=str(tiny_architectures["qwen2"])) == "completion"
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        resolve_prompt_format(auto, model_dir=str(zoo_free_dir.parent / "missing"))


@pytest.fixture
def zoo_free_dir(tmp_path: Path) -> Path:
    """A model directory whose tokenizer has no chat template (as the zoo's)."""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    return tmp_path
