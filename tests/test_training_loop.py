"""``retro-ray train``'s loop (``retro_ray.driver.loop``) with the in-process executors, on a tiny
random retrospective model and the scripted actor: the stages collect (the product's branching rule
at every failed trial of the main chain), learn (one group-to-batch function), publish (the
registry), swap (the served version) and their records, synchronous and with overlap. Ray's
executors run the same loop in ``tests/test_train_e2e.py``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from retro_ray.driver.local import in_process_learner, in_process_loop, in_process_serving
from retro_ray.durable import read_jsonl
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.run_config import load_run_config
from tests.support.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_loop")).model_dir


def run_loop(model_dir: Path, run_dir: Path, *overrides: str) -> tuple[list[dict], object]:
    cfg = load_run_config(
        None,
        [
            "run.name=loop",
            "env.name=lookup",
            "actor.policy=scripted",
            "trials.max_trials=3",
            "reflector.endpoint.max_tokens=8",
            f"serve.model_dir={model_dir}",
            "train.group_size=2",
            "train.failed_trials_per_iteration=3",
            "learner.lora.rank=4",
            "learner.micro_batch_size=8",
            *overrides,
        ],
    )
    cfg = replace(cfg, learner=replace(cfg.learner, lr=1e-3))
    serving = in_process_serving(cfg, run_dir)
    learner = in_process_learner(cfg, run_dir)
    loop = in_process_loop(
        cfg, run_dir, actor=None, serving=serving, learner=learner, tokenizer=serving.backend.tokenizer
    )  # fmt: skip
    return loop.run(), serving


def test_each_iteration_collects_with_the_adapter_the_last_one_published(model_dir, tmp_path):
    history, serving = run_loop(model_dir, tmp_path, "train.iterations=2")
    assert [r["iteration"] for r in history] == [0, 1]
    assert all(r["groups"] > 0 for r in history), "the scripted actor solved every task"
    assert [r["collect_versions"] for r in history] == [[0], [1]]  # on-policy: swapped in first
    assert [r["staleness"] for r in history] == [0, 0]
    assert [r["version"] for r in history] == [1, 2]
    assert serving.version == 2 and serving.backend.adapters == ["retro@2"]
    for field in ("collect_s", "success_rate", "failed_requests", "cpus", "reward_mean"):
        assert all(field in r for r in history), field
    for field in ("learn_wait_s", "swap_s", "seconds", "learner_loss", "learner_cursor"):
        assert all(field in r for r in history), field
    assert read_jsonl(tmp_path / "metrics.jsonl") == history  # one record per iteration, in order
    rows = ExperienceLog(tmp_path / "experience").read("loop").to_pylist()
    branched = {r["trial"] for r in rows if r["sample"] > 0}
    assert branched - {1}, "branches only after trial 0: the rule branches at every failed trial"
    written = {(r["iteration"], r["adapter_version"]) for r in rows if r["reflection"]}
    assert written == {(0, "retro@0"), (1, "retro@1")}


def test_one_reflector_trains_on_a_mixture_of_families(model_dir, tmp_path):
    """``env.name=mixture``: one loop collects failed trials of every family, each played by
    its own environment (its own step limit: the random actor plays to it), into one batch for
    one adapter."""
    history, serving = run_loop(
        model_dir, tmp_path, "env.name=mixture", "actor.policy=random", "train.iterations=1",
        "train.failed_trials_per_iteration=6",
    )  # fmt: skip
    assert history[0]["groups"] > 0 and serving.version == 1
    rows = ExperienceLog(tmp_path / "experience").read("loop").to_pylist()
    assert {r["env"] for r in rows} == {"lookup", "household", "shop"}
    longest = {
        env: max(r["steps"] for r in rows if r["env"] == env)
        for env in ("lookup", "household", "shop")
    }
    assert longest == {"lookup": 6, "household": 4, "shop": 6}  # each family's own step limit


def test_overlap_trains_one_batch_while_the_next_is_collected(model_dir, tmp_path):
    history, serving = run_loop(
        model_dir,
        tmp_path,
        "train.iterations=3",
        "train.overlap=true",
        "learner.max_staleness=1",
        "learner.loss.name=ppo_clip",
    )
    assert [r["iteration"] for r in history] == [0, 1, 2]
    # The batch of iteration i is applied before the swap that follows collection i+1, so the
    # collection of i+1 still samples the adapter of i-1: one learner step behind.
    assert [r["collect_versions"] for r in history] == [[0], [0], [1]]
    assert [r["staleness"] for r in history] == [0, 1, 1]
    assert [r["learner_old_logprobs_from_sampler"] for r in history] == [0.0, 1.0, 1.0]
    assert serving.version == 3
