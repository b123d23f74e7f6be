"""The HotPotQA environment: the three data layouts, the ReAct tools over the local docstore, the
official answer metrics, the splits, the reference policies and the reflectors.

Reads the project's shared data (``../shared/data/hotpotqa/``, ``tests/support/shared_data.py``);
small hand-written files for the official layout and the malformed cases.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from retro_ray.cli import EXIT_CONFIG, main
from retro_ray.envs.base import Task, split_of
from retro_ray.envs.benchmarks.hotpotqa import (
    HotpotQAEnv,
    HotpotQAOptions,
    answer_f1,
    match_title,
    normalize_answer,
)
from retro_ray.envs.benchmarks.hotpotqa_data import HotpotQADataError, default_data_path
from retro_ray.envs.registry import make_env
from tests.support.episodes import play
from tests.support.shared_data import HOTPOTQA as DATA

REFLEXION = DATA / "reflexion_distractor_100.json"
IRCOT = DATA / "ircot_dev_subsample.jsonl"

OFFICIAL = [
    {
        "_id": "q-official-1",
        "question": "Which city is the birthplace of the author of Green Hills?",
        "answer": "The Oslo",
        "type": "bridge",
        "supporting_facts": [["Green Hills", 0], ["Ann Lee", 1]],
        "context": [
            ["Green Hills", ["Green Hills is a novel by Ann Lee.", " It was published in 1990."]],
            ["Ann Lee", ["Ann Lee is a writer.", " She was born in Oslo.", " She lives in Rome."]],
            ["Ann Lee (singer)", ["Ann Lee is a singer from Leeds."]],
            ["Oslo", ["Oslo is the capital of Norway."]],
        ],
    }
]


def run_policy(env: HotpotQAEnv, tasks: list[Task], policy) -> tuple[float, float]:
    wins, returns = 0, 0.0
    for task in tasks:
        env.reset(task)
        while not env.done:
            env.step(policy(env))
        wins += env.won
        returns += env.score
    return wins / len(tasks), returns / len(tasks)


@pytest.fixture
def official_file(tmp_path: Path) -> Path:
    path = tmp_path / "hotpot_dev_distractor_tiny.json"
    path.write_text(json.dumps(OFFICIAL))
    return path


@pytest.fixture
def env(official_file: Path) -> HotpotQAEnv:
    return HotpotQAEnv(HotpotQAOptions(split_rule="test"), data_path=str(official_file))


# ---- data -----------------------------------------------------------------------------------------


def test_reflexion_file_is_all_test() -> None:
    env = make_env("hotpotqa", data_path=str(REFLEXION))
    assert env.data.layout == "reflexion" and len(env.data.questions) == 100
    tasks = env.tasks("test", 1000)
    assert len(tasks) == 100 and tasks[0].task_id == "5a7613c15542994ccc9186bf"
    with pytest.raises(ValueError, match=r"holds no train questions.*ircot"):
        env.tasks("train", 5)
    hashed = make_env("hotpotqa", {"split_rule": "hash"}, data_path=str(DATA))  # a folder
    assert {t.split for t in hashed.tasks("train", 5)} == {"train"}


def test_the_default_is_the_fetched_dev_set(tmp_path: Path, monkeypatch, capsys) -> None:
    """Nothing outside the checkout: the default is the cache that `retro-ray data fetch
    hotpotqa` fills, and without it the error says how to fill it."""
    monkeypatch.setenv("RETRO_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert default_data_path() == tmp_path / "cache/data/hotpotqa/hotpot_dev_distractor_v1.json"
    assert main(["env", "play", "hotpotqa", "--json"]) == EXIT_CONFIG
    assert "run `retro-ray data fetch hotpotqa`" in capsys.readouterr().err
    default_data_path().parent.mkdir(parents=True)
    default_data_path().write_text(json.dumps(OFFICIAL))
    assert make_env("hotpotqa").data.layout == "official"


def test_ircot_file_loads_with_hash_splits() -> None:
    env = make_env("hotpotqa", data_path=str(IRCOT))
    assert env.data.layout == "ircot" and len(env.data.questions) == 488
    found = {split: env.tasks(split, 1000) for split in ("train", "validation", "test")}
    assert sum(map(len, found.values())) == 488
    for split, tasks in found.items():
        assert tasks and all(split_of(t.task_id) == split for t in tasks)
    question = env.data.questions[0]
    assert question.answers == ("Chief of Protocol",)
    assert question.supporting_titles == ("Shirley Temple", "Kiss and Tell (1945 film)")
    assert len(question.paragraphs[0].sentences) == 4  # split at IRCoT's double-space joins
    assert env.tasks("train", 5, seed=1) != found["train"][:5]


def test_official_layout_loads(official_file: Path) -> None:
    env = make_env("hotpotqa", data_path=str(official_file))
    assert env.data.layout == "official"
    (question,) = env.data.questions
    assert question.qid == "q-official-1" and question.supporting_titles == (
        "Green Hills",
        "Ann Lee",
    )
    assert question.paragraphs[1].sentences[1] == "She was born in Oslo."
    (task,) = env.tasks(split_of("q-official-1"), 5)
    assert task.task_id == "q-official-1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "neither a JSON list"),
        ("[1, 2", "not valid JSON"),
        ("[]", "holds no questions"),
        ('[{"question": "q", "answer": "a"}]', "no 'context' object or list"),
        ('{"question_id": "1"}\n{broken', "line 2 is not a JSON object"),
        (
            '{"question_id": "1", "question_text": "q"}',
            "question 0 .*missing key 'answers_objects'",
        ),
        (json.dumps([{**OFFICIAL[0], "answer": ""}]), "question 0 .*no answer"),
        (
            json.dumps([{**OFFICIAL[0], "supporting_facts": [["Nowhere", 0]]}]),
            "supporting title 'Nowhere' is not among the context paragraphs",
        ),
        (json.dumps([{**OFFICIAL[0], "context": [["only a title"]]}]), r"\[title, \[sentence"),
        (
            json.dumps(
                [{"question": "q", "answer": "a", "context": {"title": ["A"], "sentences": []}}]
            ),
            "1 titles but 0 sentence lists",
        ),
    ],
)
def test_malformed_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HotpotQADataError, match=message) as error:
        make_env("hotpotqa", data_path=str(path))
    assert str(path) in str(error.value)


def test_missing_data_is_a_clear_cli_error(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere.json"
    assert main(["env", "play", "hotpotqa", "--data", str(missing), "--json"]) == EXIT_CONFIG
    assert f"HotPotQA data file {missing} does not exist" in capsys.readouterr().err
    with pytest.raises(HotpotQADataError, match=r"folder without .*reflexion_distractor_100\.json"):
        make_env("hotpotqa", data_path=str(tmp_path))


# ---- tools and metrics ----------------------------------------------------------------------------


def test_official_normalisation_and_f1() -> None:
    assert normalize_answer("The  Oslo, Norway!") == "oslo norway"
    assert answer_f1("Oslo", "the Oslo Norway") == pytest.approx(2 / 3)
    assert answer_f1("yes", "no") == 0.0 and answer_f1("no", "no") == 1.0
    titles = ["Ann Lee", "Ann Lee (singer)", "Kiss and Tell (1945 film)", "Green Hills"]
    assert match_title("ann lee", titles) == "Ann Lee"
    assert match_title("Kiss and Tell", titles) == "Kiss and Tell (1945 film)"
    assert match_title("Green Hill", titles) == "Green Hills"  # fuzzy: a typo
    assert match_title("Paris", titles) is None


def test_search_lookup_finish(env: HotpotQAEnv) -> None:
    (task,) = env.tasks("test", 1)
    assert env.reset(task).startswith("Question: Which city")
    miss = env.step("Search[Norwegian writers]")
    assert miss.observation.startswith("Could not find Norwegian writers. Similar: [")
    assert "'Ann Lee'" in miss.observation and not miss.done
    assert env.step("Lookup[born]").observation.startswith("No page is open")
    page = env.step("Search[Ann Lee]").observation
    assert page == "Ann Lee is a writer. She was born in Oslo. She lives in Rome."
    assert env.step("Lookup[she]").observation == "(Result 1 / 2) She was born in Oslo."
    assert env.step("Lookup[she]").observation == "(Result 2 / 2) She lives in Rome."
    assert env.step("Lookup[she]").observation == "No more results."
    end = env.step("Finish[oslo.]")
    assert end.done and end.info["won"] and end.reward == 1.0
    assert end.observation == "Episode finished: the answer is correct."


def test_summary_is_truncated_and_partial_answers_score_f1(official_file: Path) -> None:
    options = HotpotQAOptions(summary_sentences=1, split_rule="test")
    env = HotpotQAEnv(options, data_path=str(official_file))
    env.reset(env.tasks("test", 1)[0])
    assert env.step("Search[Ann Lee]").observation == "Ann Lee is a writer."
    end = env.step("Finish[Oslo Norway]")
    assert end.done and not end.info["won"] and end.info["score"] == pytest.approx(2 / 3)
    assert end.observation == "Episode finished: the answer is incorrect."


def test_invalid_actions_explain_and_count(env: HotpotQAEnv) -> None:
    env.reset(env.tasks("test", 1)[0])
    for action in ("dance", "Search[]", "Jump[Oslo]"):
        result = env.step(action)
        assert (
            result.observation
            == "Invalid action. Use Search[entity], Lookup[keyword] or Finish[answer]."
        )
        assert result.reward == 0.0 and not result.done
    assert result.info == {"won": False, "score": 0.0, "steps": 3}


def test_step_limit_ends_the_episode(official_file: Path) -> None:
    env = HotpotQAEnv(HotpotQAOptions(max_steps=3, split_rule="test"), str(official_file))
    env.reset(env.tasks("test", 1)[0])
    results = [env.step("Search[Oslo]") for _ in range(3)]
    assert [r.done for r in results] == [False, False, True]
    assert results[-1].observation.endswith("Step limit reached.")
    assert results[-1].info["truncated"] and not results[-1].info["won"]
    assert env.step("Finish[Oslo]").observation == "The episode is over."


# ---- policies and reflectors -----------------------------------------------------------------------


def test_expert_solves_the_100_questions_and_random_does_not() -> None:
    env = make_env("hotpotqa", data_path=str(REFLEXION))
    tasks = env.tasks("test", 100)
    assert run_policy(env, tasks, lambda e: e.expert_action()) == (1.0, 1.0)
    rng = random.Random(0)
    success, _ = run_policy(env, tasks, lambda e: e.random_action(rng))
    assert success <= 0.1


def test_cli_plays_the_100_questions(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["env", "play", "hotpotqa", "--data", str(REFLEXION), "--policy", "expert"]
    assert main([*args, "--tasks", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tasks"] == 100 and result["success_rate"] == 1.0


def test_trajectory_oracle_uses_only_what_the_trial_showed(env: HotpotQAEnv) -> None:
    (task,) = env.tasks("test", 1)
    wrong = play(env, task, ["Search[Green Hills]", "Finish[Rome]"])
    text = env.trajectory_oracle(wrong, [])
    assert 'I answered "Rome", which was wrong.' in text
    assert "I read Green Hills. Pages I saw named but never opened: Ann Lee; search them." in text
    assert "Oslo" not in text  # neither the gold answer nor its page was ever shown
    missed = play(env, task, ["Search[writers]", "Finish[Rome]"])
    assert "never opened: " in env.trajectory_oracle(missed, [])  # titles the miss listed
    again = play(env, task, ["Search[Ann Lee]"] * 7)
    text = env.trajectory_oracle(again, [env.trajectory_oracle(wrong, [])])
    assert text.startswith("I ran out of steps") and "Earlier wrong answers: Rome." in text


def test_ground_truth_names_the_answer_and_the_supporting_pages(env: HotpotQAEnv) -> None:
    text = env.ground_truth_reflection(env.tasks("test", 1)[0])
    assert '"The Oslo"' in text and "Green Hills and Ann Lee" in text
