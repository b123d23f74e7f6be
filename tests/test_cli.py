"""The command line, in process: what users type and what they see."""

from __future__ import annotations

import json
import statistics

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


def test_eval_table_over_agents_and_seeds_resumes_from_the_log(capsys, tmp_path) -> None:
    argv = [
        "eval",
        "--agent",
        "react",
        "--agent",
        "trajectory-oracle",
        "--seeds",
        "2",
        "--tasks",
        "10",
        "--trials",
        "3",
        "--json",
        "-",
        "--set",
        "actor.policy=scripted",
        "--set",
        f"run.output_dir={tmp_path}",
    ]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(table["agents"]) == ["react", "trajectory-oracle"] and table["seeds"] == [0, 1]
    for row in table["agents"].values():
        curve = row["success_by_trial"]
        assert len(curve) == 3 and curve == sorted(curve) and row["tasks"] == 20
        finals = list(row["per_seed"].values())
        assert row["spread"] == pytest.approx(statistics.stdev(finals))  # sample, over seeds
    oracle, react = table["agents"]["trajectory-oracle"], table["agents"]["react"]
    assert oracle["success_by_trial"][-1] > react["success_by_trial"][-1]
    assert table["gap_closed"] is None  # no Reflexion / Retroformer rows to compare
    log = tmp_path / "run/eval/experience"
    files = sorted(log.glob("run=eval-*/iteration=*/part-*.parquet"))
    assert len(files) == 40  # 2 agents x 2 seeds x 10 tasks, one file per episode

    mtimes = [f.stat().st_mtime_ns for f in files]
    assert main(argv) == 0  # a rerun plays nothing and prints the same table
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["agents"] == table["agents"]
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_eval_run_must_be_a_training_run(capsys, tmp_path) -> None:
    assert main(["eval", "--run", str(tmp_path)]) == EXIT_CONFIG
    assert "no config.json" in capsys.readouterr().err


def test_env_list(capsys) -> None:
    assert main(["env", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in BUILTINS)


def test_train_rejects_a_learner_that_would_not_publish_every_batch(capsys, tmp_path) -> None:
    argv = ["train", "--set", "learner.checkpoint_every=2", "--set", f"run.output_dir={tmp_path}"]
    assert main(argv) == EXIT_CONFIG
    assert "learner.checkpoint_every=1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work: nothing written
