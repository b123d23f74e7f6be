"""The command line, in process: what users type and what they see."""

from __future__ import annotations

import json

import pytest

from retro_ray.cli import EXIT_CONFIG, main

BUILTINS = ["lookup", "household", "shop"]


def play(capsys, *args: str) -> dict:
    assert main(["env", "play", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("env", BUILTINS)
def test_env_play_expert_solves_everything_and_random_does_not(env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expert = play(capsys, env, "--policy", "expert", "--tasks", "40")
    assert expert["env"] == env and expert["tasks"] == 40
    assert expert["success_rate"] == 1.0 and expert["mean_return"] == 1.0
    random_ = play(capsys, env, "--policy", "random", "--tasks", "40")
    assert random_["success_rate"] <= 0.3


def test_unknown_environment_is_a_clear_error(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["env", "play", "atari", "--json"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "unknown environment 'atari'" in err and "lookup" in err


def test_bad_config_key_is_a_clear_error(capsys) -> None:
    assert main(["config", "--set", "trials.memory=2"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "trials.memory" in err and "memory_size" in err


def test_eval_with_oracle_reflector(capsys, tmp_path) -> None:
    code = main(
        [
            "eval",
            "--agent",
            "trajectory-oracle",
            "--json",
            "-",
            "--set",
            "actor.policy=scripted",
            "--set",
            "env.num_tasks=10",
            "--set",
            "trials.max_trials=3",
            "--set",
            f"run.output_dir={tmp_path}",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["agent"] == "trajectory-oracle" and len(summary["success_by_trial"]) == 3
    assert (tmp_path / "run/eval-trajectory-oracle/results.jsonl").exists()


def test_env_list(capsys) -> None:
    assert main(["env", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in BUILTINS)
