"""The HotPotQA environment: the three data layouts, the ReAct tools over the local docstore, the
official answer metrics, the splits, the reference policies and the reflectors.

Reads the project's shared data (``../shared/data/hotpotqa/``, ``tests/support/shared_data.py``);
small hand-written files for the official layout and the malformed cases.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest

from retro_ray.agents.actors import ScriptedActor
from retro_ray.agents.reflectors import Reflection, TrajectoryOracleReflector
from retro_ray.agents.results import summarize
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.cli import EXIT_CONFIG, main
from retro_ray.envs.base import Task, split_of
from retro_ray.envs.benchmarks.hotpotqa import HotpotQAEnv, HotpotQAOptions
from retro_ray.envs.benchmarks.hotpotqa_data import HotpotQADataError, default_data_path
from retro_ray.envs.benchmarks.hotpotqa_reading import (
    Advice,
    answer_f1,
    capitalised_spans,
    match_title,
    normalize_answer,
    read_advice,
    read_question,
)
from retro_ray.envs.builtin.common import bracket_action
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


# ---- the scripted actor and the misleading reflector ----------------------------------------------

needs_ircot = pytest.mark.skipif(not IRCOT.exists(), reason=f"{IRCOT} is not there")


class FirstChoice(random.Random):
    """Ties go to the first option, as in the zoo's demonstrations."""

    def choice(self, seq):
        return seq[0]


def scripted_trial(env: HotpotQAEnv, task: Task, reflections=(), seed: str = "0", trial: int = 0):
    """One trial of the scripted actor, its tie-breaks seeded per step as the trial loop does."""

    def actions():
        while True:
            yield env.scripted_action(reflections, random.Random(f"{seed}|{len(env.log)}"))

    return play(env, task, actions(), trial)


def finish_of(trajectory) -> str | None:
    last = trajectory.steps[-1].action
    return last[len("Finish[") : -1] if last.startswith("Finish[") else None


@pytest.fixture(scope="module")
def ircot() -> HotpotQAEnv:
    if not IRCOT.exists():
        pytest.skip(f"{IRCOT} is not there")
    return make_env("hotpotqa", data_path=str(IRCOT))


def test_reading_questions_and_advice() -> None:
    choice = read_question("Which chain is further north, Pizza Inn or Papa Gino's?")
    assert choice.kind == "choice" and choice.options == ("Pizza Inn", "Papa Gino's")
    which_of = read_question("Which of Jonny Craig and Pete Doherty has been in more bands ?")
    assert which_of.options == ("Jonny Craig", "Pete Doherty")
    spelled = read_question("Which band, Letters to Cleo or Screaming Trees, had more members?")
    assert spelled.options == ("Letters to Cleo", "Screaming Trees")
    both = read_question("Are both Coldplay and Pierre Bouvier from the same country?")
    assert both.kind == "yes_no"
    bridge = read_question(
        "Jaclyn Stapp is married to the singer of a band that split in what year?"
    )
    assert bridge.kind == "year" and bridge.entities[0] == "Jaclyn Stapp" and not bridge.options
    quoted = read_question('Who wrote the book that inspired the name of the CD "Arthur Rex"?')
    assert quoted.entities[0] == "Arthur Rex"
    spans = capitalised_spans("He studied at the University of the West Indies. The band")
    assert spans == [(18, "University of the West Indies")]
    advice = read_advice(
        [
            'I answered "Rome", which was wrong. Pages I saw named but never opened: '
            "Ann Lee | Brown County, Kansas; search them.",
            'I answered "St. Louis", which was wrong. Earlier wrong answers: Rome | Paris. '
            "I read Ann Lee.",
        ]
    )
    assert advice.ruled_out == {"rome", "st louis", "paris"} and advice.answer is None
    assert advice.pages == ("Ann Lee", "Brown County, Kansas")  # titles keep their commas
    stated = 'The answer is "The Oslo", stated in A and B: search them, then Finish[The Oslo].'
    assert read_advice([stated]) == Advice("The Oslo", frozenset(), ())
    wrong = 'I answered "the oslo", which was wrong.'
    assert read_advice([stated, wrong]).answer is None  # an answer called wrong is never given


def test_scripted_actor_reads_hops_on_advice(env: HotpotQAEnv) -> None:
    """The hand-made question: alone it answers the only new name it read (the author, wrong);
    the oracle's reflection sends it to the author's page and rules that name out: it wins.
    Ties go to the first option, as in the zoo's demonstrations."""
    (task,) = env.tasks("test", 1)
    first = scripted_trial(env, task)
    assert [s.action for s in first.steps] == ["Search[Green Hills]", "Finish[Ann Lee]"]
    reflection = env.trajectory_oracle(first, [])
    assert "never opened: Ann Lee; search them" in reflection
    env.reset(task)
    actions: list[str] = []
    while not env.done:
        actions.append(env.scripted_action([reflection], FirstChoice()))
        env.step(actions[-1])
    assert actions == ["Search[Ann Lee]", "Search[Green Hills]", "Finish[Oslo]"] and env.won


def test_scripted_actor_wins_with_the_ground_truth(ircot: HotpotQAEnv) -> None:
    for task in ircot.tasks("train", 60):
        trajectory = scripted_trial(ircot, task, [ircot.ground_truth_reflection(task)])
        assert trajectory.won and len(trajectory.steps) == 1, task.task_id


def test_scripted_actor_never_repeats_a_ruled_out_answer(ircot: HotpotQAEnv) -> None:
    retried = 0
    for task in ircot.tasks("train", 80):
        memory: list[str] = []
        given: set[str] = set()
        for k in range(3):
            trajectory = scripted_trial(ircot, task, memory, trial=k)
            answer = finish_of(trajectory)
            assert answer is not None and normalize_answer(answer) not in given
            if trajectory.won:
                break
            given.add(normalize_answer(answer))
            memory.append(ircot.trajectory_oracle(trajectory, memory))
            retried += k > 0
        if len(given) >= 2:  # the list of earlier wrong answers alone rules them out as well
            earlier = f"I ran out of steps. Earlier wrong answers: {' | '.join(sorted(given))}."
            answer = finish_of(scripted_trial(ircot, task, [earlier]))
            assert answer is not None and normalize_answer(answer) not in given
    assert retried >= 40


def test_scripted_actor_searches_the_pages_a_reflection_names(ircot: HotpotQAEnv) -> None:
    followed = 0
    for task in ircot.tasks("train", 40):
        named = [p.title for p in ircot._by_id[task.task_id].paragraphs][-2:]
        advice = f"Pages I saw named but never opened: {' | '.join(named)}; search them."
        trajectory = scripted_trial(ircot, task, [advice])
        assert [s.action for s in trajectory.steps[:2]] == [f"Search[{t}]" for t in named]
        first = scripted_trial(ircot, task)
        if first.won:
            continue
        reflection = ircot.trajectory_oracle(first, [])
        pages = read_advice([reflection]).pages
        second = scripted_trial(ircot, task, [reflection], trial=1)
        assert [s.action for s in second.steps[: len(pages)]] == [f"Search[{p}]" for p in pages]
        followed += bool(pages)
    assert followed >= 10


def test_scripted_actor_is_deterministic_without_reflections(ircot: HotpotQAEnv) -> None:
    """No reflection, no new information: every trial replays the first, run after run."""
    loop = TrialLoop(
        lambda: make_env("hotpotqa", data_path=str(IRCOT)), ScriptedActor(), None, max_trials=3
    )
    tasks = ircot.tasks("train", 30)
    runs = [asyncio.run(loop.run_tasks(tasks, 30)) for _ in range(2)]
    for result in runs[0]:
        assert len({t.trajectory for t in result.trials}) == 1, result.task_id
    assert [r.trials[0].trajectory for r in runs[0]] == [r.trials[0].trajectory for r in runs[1]]


@needs_ircot
@pytest.mark.parametrize("max_steps", [1, 2, 4, 7])
def test_scripted_actor_always_finishes_within_the_step_limit(max_steps: int) -> None:
    """Even when a reflection names every page of the docstore to search."""
    env = make_env("hotpotqa", {"max_steps": max_steps}, data_path=str(IRCOT))
    for task in env.tasks("train", 25):
        titles = [p.title for p in env._by_id[task.task_id].paragraphs]
        pages = f"Pages I saw named but never opened: {' | '.join(titles)}; search them."
        for reflections in ([], [pages]):
            trajectory = scripted_trial(env, task, reflections)
            assert len(trajectory.steps) <= max_steps and finish_of(trajectory)
            assert all(bracket_action(s.action) for s in trajectory.steps)  # well formed
            assert "Step limit reached" not in trajectory.steps[-1].observation


class MisleadingReflector:
    name = "misleading"

    async def reflect(self, env, trajectory, memory, seed: str) -> Reflection:
        return Reflection(env.misleading_reflection(trajectory, random.Random(seed)))


def test_misleading_reflections_read_like_good_ones_and_mislead(ircot: HotpotQAEnv) -> None:
    """The three forms, each in the phrasing of the ground truth or the oracle; following them
    does much worse than following the oracle."""
    forms: set[str] = set()
    for i, task in enumerate(ircot.tasks("train", 60)):
        first = scripted_trial(ircot, task)
        if first.won:
            continue
        given = finish_of(first)
        assert given is not None
        text = ircot.misleading_reflection(first, random.Random(i))
        advice = read_advice([text])
        if text.startswith("The answer is"):
            statement = r'The answer is "(.+)", stated in .+: search them, then Finish\[\1\]\.'
            assert re.fullmatch(statement, text) and advice.answer is not None
            forms.add("repeat" if advice.answer == given else "other")
        else:
            assert re.match(r'I answered "(.+?)", which was wrong\.', text) and advice.ruled_out
            assert normalize_answer(given) not in advice.ruled_out  # the real one stays free
            forms.add("rule_out")
    assert forms == {"repeat", "other", "rule_out"}

    def success(reflector) -> float:
        make = lambda: make_env("hotpotqa", data_path=str(IRCOT))  # noqa: E731
        loop = TrialLoop(make, ScriptedActor(), reflector, max_trials=3)
        results = asyncio.run(loop.run_tasks(ircot.tasks("train", 60), 60))
        return summarize(results, 3)["success_rate"]

    assert success(MisleadingReflector()) < success(TrajectoryOracleReflector()) - 0.1
