"""The ALFWorld environment: game discovery, task ids and splits, archive unpacking, the game
traps (``put`` vs ``move``, ``won`` vs ``done``), invalid actions, the step limit, the reference
policies and the reflectors.

Reads ``../shared/data/alfworld/valid_unseen.tgz`` (``tests/support/shared_data.py``). Every reset parses a game's PDDL (about half
a second, more on a busy machine), so the games played here are a handful; the full 134-game
expert check is ``retro-ray env play alfworld --policy expert --tasks 134``. The tests that play
skip when the ``alfworld`` package is missing, unless ``RETRO_RAY_REQUIRE_EXTRAS`` names the
extra (``make test`` installs it and sets that): then they fail (``tests/support/extras.py``).
"""

from __future__ import annotations

import dataclasses
import io
import random
import re
import shutil
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from retro_ray.envs.base import Step, Task, Trajectory, split_of
from retro_ray.envs.benchmarks import alfworld_data
from retro_ray.envs.benchmarks.alfworld_data import (
    AlfworldDataError,
    default_data_path,
    index_games,
    split_for,
    unpack,
)
from retro_ray.envs.builtin.common import EPISODE_OVER, STEP_LIMIT_NOTE
from tests.support.extras import require_alfworld
from tests.support.shared_data import ALFWORLD

VALID_UNSEEN = ALFWORLD / "valid_unseen.tgz"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private unpack cache for this module (the archive unpacks once, in about a second)."""
    root = tmp_path_factory.mktemp("retro_ray_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRO_RAY_CACHE", str(root))
        yield root / "alfworld"


@pytest.fixture(scope="module")
def env(cache: Path):
    require_alfworld()
    from retro_ray.envs.benchmarks.alfworld_env import AlfworldEnv

    return AlfworldEnv(data_path=str(VALID_UNSEEN))


def play(env, task: Task, actions) -> Trajectory:
    """Play ``actions`` (a list, or a function of the env) until the trial ends."""
    trajectory = Trajectory(task=task, trial=0, first_observation=env.reset(task))
    scripted = list(actions) if not callable(actions) else None
    while not env.done and (scripted is None or scripted):
        action = scripted.pop(0) if scripted is not None else actions(env)
        result = env.step(action)
        trajectory.steps.append(Step(action, result.observation, result.reward))
    trajectory.won, trajectory.done, trajectory.score = env.won, env.done, float(env.won)
    return trajectory


# ---- data: no alfworld package needed ---------------------------------------------------------


def test_the_evaluation_archive_is_the_test_split() -> None:
    refs = index_games(VALID_UNSEEN)
    assert len(refs) == 134
    assert {r.split for r in refs} == {"test"}
    first = refs[0]
    assert first.task_id.startswith("valid_unseen/") and first.task_id.count("/") == 2
    assert len({r.task_type for r in refs}) == 6 and "" not in {r.task_type for r in refs}


def test_splits_follow_the_split_folder() -> None:
    assert split_for("valid_unseen/a-B-None-C-1/trial_1") == "test"
    assert split_for("valid_seen/a-B-None-C-1/trial_1") == "validation"
    train = [split_for(f"train/pick_and_place_simple-X-None-Y-{i}/trial_1") for i in range(2000)]
    assert set(train) == {"train", "validation"}
    assert 0.05 < train.count("validation") / len(train) < 0.15


@pytest.fixture(scope="module")
def seen_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``json_2.1.1/valid_seen`` made from the evaluation archive (its 134 games, renamed)."""
    root = tmp_path_factory.mktemp("alfworld_data")
    with tarfile.open(VALID_UNSEEN) as tar:
        tar.extractall(root, filter="data")
    (root / "json_2.1.1" / "valid_unseen").rename(root / "json_2.1.1" / "valid_seen")
    return root / "json_2.1.1" / "valid_seen"


def test_a_split_folder_counts_wherever_data_points(seen_copy: Path, tmp_path: Path) -> None:
    """``--data json_2.1.1/valid_seen`` once gave hash splits (the split folder was read from the
    ids below the data path): now the folder's own name decides, at any depth."""
    task = next(p for p in seen_copy.iterdir() if p.is_dir())
    for data in (seen_copy, seen_copy.parent, task):
        refs = index_games(data)
        assert {r.split for r in refs} == {"validation"}, data
        assert all(r.task_id.startswith("valid_seen/") for r in refs)
    assert len(index_games(seen_copy)) == 134
    ids = {r.task_id for r in index_games(task)}
    assert ids <= {r.task_id for r in index_games(seen_copy.parent)}  # the same ids
    unseen = tmp_path / "valid_unseen"
    shutil.copytree(task, unseen / task.name)
    assert {r.split for r in index_games(unseen)} == {"test"}
    custom = tmp_path / "mine" / "games"  # no split folder: ids below the data path, hashed
    shutil.copytree(task, custom / task.name)
    refs = index_games(custom)
    assert {r.task_id for r in refs} == {i.replace("valid_seen/", "", 1) for i in ids}
    assert all(r.split == split_of(r.task_id) for r in refs)


def test_the_default_is_alfworlds_own_data_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "alf"))
    assert default_data_path() == tmp_path / "alf" / "json_2.1.1"
    with pytest.raises(AlfworldDataError, match=r"run `retro-ray data fetch alfworld`"):
        index_games(None)
    monkeypatch.delenv("ALFWORLD_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_path() == tmp_path / ".cache" / "alfworld" / "json_2.1.1"


def test_unpacking_is_idempotent_and_leaves_stubs_in_the_copy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RETRO_RAY_CACHE", str(tmp_path))
    alfworld_data._unpack.cache_clear()
    first = unpack(VALID_UNSEEN)
    alfworld_data._unpack.cache_clear()
    assert unpack(VALID_UNSEEN) == first
    assert first.parent == tmp_path / "alfworld"
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no scratch folder left
    games = list(first.rglob("game.tw-pddl"))
    stubs = list(first.rglob("traj_data.json"))
    assert len(games) == len(stubs) == 134
    assert '"task_type": "pick_' in stubs[0].read_text() or "look_at" in stubs[0].read_text()


def _one_game_archive(path: Path, member: str) -> Path:
    """A one-game copy of the evaluation archive, with the game file under ``member``."""
    with tarfile.open(VALID_UNSEEN) as tar:
        source = next(m for m in tar.getmembers() if m.name.endswith("game.tw-pddl"))
        data = tar.extractfile(source).read()
    info = tarfile.TarInfo(member)
    info.size = len(data)
    with tarfile.open(path, "w:gz") as out:
        out.addfile(info, io.BytesIO(data))
    return path


def test_malformed_data_is_reported_clearly(tmp_path: Path) -> None:
    with pytest.raises(AlfworldDataError, match="no ALFWorld data at"):
        index_games(tmp_path / "missing")
    with pytest.raises(AlfworldDataError, match=r"no game\.tw-pddl files and no \.tgz archives"):
        index_games(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AlfworldDataError, match="neither a folder"):
        index_games(tmp_path / "notes.txt")
    (tmp_path / "broken.tgz").write_bytes(b"not a tarball")
    with pytest.raises(AlfworldDataError, match="cannot read the archive"):
        index_games(tmp_path / "broken.tgz")
    twice = tmp_path / "twice"
    twice.mkdir()
    _one_game_archive(twice / "a.tgz", "x/valid_unseen/t-A-None-B-1/trial_1/game.tw-pddl")
    _one_game_archive(twice / "b.tgz", "y/valid_unseen/t-A-None-B-1/trial_1/game.tw-pddl")
    with pytest.raises(AlfworldDataError, match="appears twice"):
        index_games(twice)
    bad = tmp_path / "games" / "valid_unseen" / "t-A-None-B-1" / "trial_1" / "game.tw-pddl"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(AlfworldDataError, match="cannot read the ALFWorld game"):
        alfworld_data.load_game(bad)
    bad.write_text('{"grammar": ""}')
    with pytest.raises(AlfworldDataError, match="missing pddl_domain, pddl_problem"):
        alfworld_data.load_game(bad)


def test_missing_package_names_the_extra(monkeypatch) -> None:
    from retro_ray.envs.benchmarks.alfworld_env import AlfworldEnv, AlfworldUnavailable

    monkeypatch.setitem(sys.modules, "textworld", None)  # import textworld now fails
    with pytest.raises(AlfworldUnavailable, match=r"pip install 'retro_ray\[alfworld\]'"):
        AlfworldEnv()


LAMP_TASK = Task(
    "alfworld", "valid_unseen/look_at_obj_in_light-CD-None-DeskLamp-308/trial_1", "test"
)
LAMP_ROOM = "You are in the middle of a room. Looking quickly around you, you see a bed 1, a desk 2, a desk 1, and a drawer 1.\n\nYour task is to: look at cd under the desklamp."


def lamp_trial() -> Trajectory:
    """A written failed trial of a look-at task: the lamp seen on desk 1, no cd found."""
    steps = [
        ("go to bed 1", "You arrive at bed 1. On the bed 1, you see a pillow 1."),
        ("go to desk 1", "You arrive at desk 1. On the desk 1, you see a desklamp 1, and a mug 2."),
        ("go to drawer 1", "You arrive at drawer 1. The drawer 1 is closed."),
        ("put cd 1 in desk 1", "Nothing happens."),
        (
            "go to bed 1",
            "You arrive at bed 1. On the bed 1, you see a pillow 1. " + STEP_LIMIT_NOTE,
        ),
    ]
    return Trajectory(LAMP_TASK, 0, LAMP_ROOM, [Step(a, o, 0.0) for a, o in steps], done=True)


def test_oracle_reads_a_written_trajectory() -> None:
    from retro_ray.envs.benchmarks.alfworld_reflect import oracle_reflection

    task, room = LAMP_TASK, LAMP_ROOM
    first = oracle_reflection(lamp_trial(), [], max_steps=5, put_alias=False)
    assert first == (
        "I saw desklamp 1 at desk 1. No cd at: bed 1, desk 1. Not searched yet: desk 2, drawer 1. "
        "Plan: take a cd, then go to desk 1 and use desklamp 1. "
        "1 of my actions did nothing ('put cd 1 in desk 1'). "
        "The game does not know 'put X in/on Y'; it says 'move X to Y'. "
        "I ran out of steps: skip places already searched and do not loop."
    )
    later = Trajectory(
        task,
        1,
        room,
        [Step("go to desk 2", "You arrive at desk 2. On the desk 2, you see a cd 1.", 0.0)],
    )
    second = oracle_reflection(later, [first], max_steps=5)
    assert second == (
        "I saw cd 1 at desk 2. I saw desklamp 1 at desk 1. No cd at: bed 1, desk 1. "
        "Plan: take a cd, then go to desk 1 and use desklamp 1."
    )


def test_task_sentences_give_the_goal() -> None:
    """The scripted actor reads the goal from the task sentence, in each of its phrasings."""
    from retro_ray.envs.benchmarks.alfworld_reflect import Goal

    room = LAMP_ROOM.split("Your task is to: ")[0] + "Your task is to: "
    cases = {
        "put some spraybottle on toilet.": ("pick_and_place_simple", "spraybottle", "toilet"),
        "put a mug in coffeemachine.": ("pick_and_place_simple", "mug", "coffeemachine"),
        "put two cd in safe.": ("pick_two_obj_and_place", "cd", "safe"),
        "find two pillow and put them in sofa.": ("pick_two_obj_and_place", "pillow", "sofa"),
        "look at bowl under the desklamp.": ("look_at_obj_in_light", "bowl", "desklamp"),
        "examine the book with the desklamp.": ("look_at_obj_in_light", "book", "desklamp"),
        "clean some bowl and put it in cabinet.": ("pick_clean_then_place_in_recep", "bowl", "cabinet"),
        "put a clean lettuce in diningtable.": ("pick_clean_then_place_in_recep", "lettuce", "diningtable"),
        "heat some egg and put it in garbagecan.": ("pick_heat_then_place_in_recep", "egg", "garbagecan"),
        "put a hot apple in fridge.": ("pick_heat_then_place_in_recep", "apple", "fridge"),
        "cool some pan and put it in stoveburner.": ("pick_cool_then_place_in_recep", "pan", "stoveburner"),
        "put a cool tomato in microwave.": ("pick_cool_then_place_in_recep", "tomato", "microwave"),
    }  # fmt: skip
    for sentence, expected in cases.items():
        goal = Goal.from_task_text(room + sentence)
        assert (goal.task_type, goal.obj, goal.receptacle) == expected, sentence
    assert Goal.from_task_text(room + "dance a waltz.") == Goal()
    assert Goal.from_task_text(LAMP_ROOM) == Goal.from_task_id(LAMP_TASK.task_id)


def test_advice_reads_back_what_the_reflectors_write() -> None:
    from retro_ray.envs.benchmarks.alfworld_reflect import (
        Goal,
        ground_truth_text,
        oracle_reflection,
        read_advice,
    )

    goal = Goal.from_task_text(LAMP_ROOM)
    oracle = oracle_reflection(lamp_trial(), [], max_steps=5)
    advice = read_advice([oracle], goal)
    assert advice.object_at == () and advice.plan == ()
    assert advice.lamps == (("desklamp 1", "desk 1"),)
    assert advice.ruled_out == {"bed 1", "desk 1"}
    assert advice.unsearched == ("desk 2", "drawer 1")
    walkthrough = ["go to desk 2", "take cd 1 from desk 2", "go to desk 1", "use desklamp 1"]
    advice = read_advice([oracle, ground_truth_text(walkthrough)], goal)
    assert advice.object_at == ("desk 2",) and advice.plan == tuple(walkthrough)
    assert read_advice(["No mug at: desk 2. I saw mug 1 at bed 1."], goal) == read_advice([], goal)


def test_scripted_actor_examines_a_place_that_shares_its_spot() -> None:
    """ALFWorld ignores a walk to a receptacle that stands where the actor stands (cabinets 22
    and 23 of a kitchen): the scripted actor examines it instead of walking there again, and
    takes the object it finds there."""
    from retro_ray.envs.benchmarks.alfworld_play import ScriptedPlay
    from retro_ray.envs.benchmarks.alfworld_reflect import Advice, Goal, read_trajectory

    room = LAMP_ROOM.replace("a bed 1, a desk 2", "a cabinet 23, a cabinet 22, a bed 1, a desk 2")
    goal = Goal.from_task_text(room)
    steps = [
        ("go to cabinet 23", "You arrive at cabinet 23. On the cabinet 23, you see a mug 2."),
        ("go to cabinet 22", "Nothing happens."),
    ]

    def next_action(played: list[tuple[str, str]]) -> str:
        trial = Trajectory(LAMP_TASK, 0, room, [Step(a, o, 0.0) for a, o in played])
        play = ScriptedPlay(goal, read_trajectory(trial, 12), Advice(), [a for a, _ in played],
                            random.Random(0))  # fmt: skip
        return play.next_action()

    assert next_action(steps) == "examine cabinet 22"
    looked = [*steps, ("examine cabinet 22", "On the cabinet 22, you see a cd 1.")]
    assert next_action(looked) == "take cd 1 from cabinet 22"
    empty = [*steps, ("examine cabinet 22", "On the cabinet 22, you see nothing.")]
    assert next_action(empty) not in {"go to cabinet 22", "go to cabinet 23", "examine cabinet 22"}


def test_misleading_reflection_turns_the_facts_around() -> None:
    """Said in the oracle's sentences, every fact wrong: the cd "seen" where the trial found
    none, the unsearched places (and where the cd really was) ruled out, the searched places
    called unsearched, the lamp moved away from where it stood."""
    from retro_ray.envs.benchmarks.alfworld_reflect import Goal, misleading_text, read_advice

    goal = Goal.from_task_text(LAMP_ROOM)
    trial = lamp_trial()
    saw_cd = Step("go to desk 2", "You arrive at desk 2. On the desk 2, you see a cd 3.", 0.0)
    seen = dataclasses.replace(trial, steps=[saw_cd, *trial.steps])
    for seed in range(20):
        advice = read_advice([misleading_text(trial, random.Random(seed), 5)], goal)
        assert len(advice.object_at) == 1 and advice.object_at[0] in {"bed 1", "desk 1"}
        assert advice.ruled_out and advice.ruled_out <= {"desk 2", "drawer 1"}
        assert set(advice.unsearched) <= {"bed 1", "desk 1"}
        assert [place for _, place in advice.lamps] != ["desk 1"] and advice.plan == ()
        text = misleading_text(seen, random.Random(seed), 5)
        assert "I saw cd 3 at " in text and "desk 2" in read_advice([text], goal).ruled_out


# ---- playing: needs the alfworld package -------------------------------------------------------


def test_expert_wins_a_mixed_subset(env) -> None:
    for task in env.tasks("test", 3):
        trajectory = play(env, task, lambda e: e.expert_action())
        assert trajectory.won, task.task_id
        assert [s.action for s in trajectory.steps] == env.walkthrough
        assert sum(s.reward for s in trajectory.steps) == 1.0


def test_first_observation_and_admissible_commands(env) -> None:
    (task,) = env.tasks("test", 1)
    argv = list(sys.argv)
    observation = env.reset(task)
    assert sys.argv == argv  # fast-downward's translator overwrites it; the env restores it
    assert observation.startswith("You are in the middle of a room.")
    assert "Welcome" not in observation and "\n\nYour task is to: " in observation
    assert env.walkthrough[0] in env.admissible_commands
    result = env.step("look")
    assert result.info["admissible_commands"] == env.admissible_commands


def test_put_is_read_as_move_and_success_is_won(env) -> None:
    (task,) = env.tasks("test", 1)
    *approach, final = env.walkthrough
    assert final.startswith("move ")
    obj, place = final.removeprefix("move ").split(" to ")
    trajectory = play(env, task, [*approach, f"Put {obj} in/on {place}."])
    assert trajectory.won and trajectory.steps[-1].reward == 1.0
    assert env.step("look").observation == EPISODE_OVER
    literal = dataclasses.replace(env.options, put_alias=False)
    env.options = literal
    try:
        assert env.command_for(f"put {obj} on {place}") == f"put {obj} on {place}"
    finally:
        env.options = dataclasses.replace(literal, put_alias=True)
    assert env.command_for(f"put {obj} on {place}") == final


def test_invalid_actions_and_the_step_limit(env) -> None:
    (task,) = env.tasks("test", 1)
    env.reset(task)
    result = env.step("fly to the moon")
    assert (result.observation, result.reward, result.done) == ("Nothing happens.", 0.0, False)
    env.options = dataclasses.replace(env.options, invalid_hint=True)
    try:
        hinted = env.step("fly to the moon").observation
    finally:
        env.options = dataclasses.replace(env.options, invalid_hint=False)
    assert hinted.startswith("Nothing happens. Valid here: ") and "go to <place>" in hinted
    env.max_steps = 3
    try:
        last = env.step("look")
    finally:
        env.max_steps = env.options.max_steps
    assert last.done and not last.info["won"] and last.observation.endswith(STEP_LIMIT_NOTE)
    assert last.info["steps"] == 3


def test_expert_replans_after_a_detour(env) -> None:
    (task,) = env.tasks("test", 1)
    env.reset(task)
    detours = [c for c in env.admissible_commands if c.startswith("go to ")]
    env.step(next(c for c in detours if c != env.walkthrough[0]))
    while not env.done:
        env.step(env.expert_action())
    assert env.won


def test_random_actions_are_admissible(env) -> None:
    (task,) = env.tasks("test", 1)
    env.reset(task)
    env.max_steps = 8
    rng = random.Random(0)
    try:
        while not env.done:
            action = env.random_action(rng)
            assert action in env.admissible_commands and action != "help"
            env.step(action)
    finally:
        env.max_steps = env.options.max_steps
    assert env.steps_taken == 8 or env.won


def test_trajectory_oracle_reports_what_the_trial_showed(env) -> None:
    task = next(
        t for t in env.tasks("test", 20) if t.payload["task_type"] == "pick_and_place_simple"
    )
    env.reset(task)
    goal_place = env.walkthrough[0].removeprefix("go to ")
    obj = env.walkthrough[1].split(" from ")[0].removeprefix("take ")
    others = [c for c in env.admissible_commands if c.startswith("go to ") and c[6:] != goal_place]
    first = play(env, task, [*others[:2], "put nothing in nowhere"])
    reflection = env.trajectory_oracle(first, [])
    kind = obj.split()[0]
    assert f"No {kind} at: " in reflection or "I saw" in reflection
    assert "Not searched yet: " in reflection and "Plan: take a " in reflection
    assert "did nothing ('put nothing in nowhere')" in reflection
    second = play(env, task, [f"go to {goal_place}"])
    merged = env.trajectory_oracle(second, [reflection])
    assert f"I saw {obj}" in merged and f"at {goal_place}." in merged
    ruled_out = re.findall(rf"No {kind} at: (.+?)\.", reflection)
    if ruled_out:  # what the earlier trial ruled out is kept
        assert f"No {kind} at: {ruled_out[0]}" in merged
    truth = env.ground_truth_reflection(task)
    assert truth.endswith("; ".join(env.walkthrough) + ".") and goal_place in truth


def test_games_from_a_folder_are_read_in_place(tmp_path: Path, env) -> None:
    from retro_ray.envs.benchmarks.alfworld_env import AlfworldEnv

    member = "valid_unseen/t-A-None-B-1/trial_1/game.tw-pddl"
    with tarfile.open(_one_game_archive(tmp_path / "one.tgz", member)) as tar:
        tar.extractall(tmp_path / "games", filter="data")
    before = sorted(p.name for p in (tmp_path / "games").rglob("*"))
    folder_env = AlfworldEnv(data_path=str(tmp_path / "games"))
    (task,) = folder_env.tasks("test", 5)
    assert task.task_id == "valid_unseen/t-A-None-B-1/trial_1"
    assert play(folder_env, task, lambda e: e.expert_action()).won
    folder_env.close()
    assert sorted(p.name for p in (tmp_path / "games").rglob("*")) == before
    with pytest.raises(AlfworldDataError, match="no 'train' games"):
        folder_env.tasks("train", 1)


def test_registered_with_options(cache: Path) -> None:
    require_alfworld()
    from retro_ray.config import ConfigError
    from retro_ray.envs.registry import make_env

    env = make_env("alfworld", {"max_steps": 7}, data_path=str(VALID_UNSEEN))
    assert env.max_steps == 7
    with pytest.raises(ConfigError, match="max_steps"):
        make_env("alfworld", {"max_steps": 0}, data_path=str(VALID_UNSEEN))


@pytest.mark.slow
def test_command_line_plays_alfworld(cache: Path, capsys, tmp_path: Path, monkeypatch) -> None:
    require_alfworld()
    import json

    from retro_ray.cli import EXIT_CONFIG, main

    monkeypatch.chdir(tmp_path)
    args = ["env", "play", "alfworld", "--data", str(VALID_UNSEEN), "--json"]
    assert main([*args, "--policy", "expert", "--tasks", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tasks"] == 2 and result["success_rate"] == 1.0
    assert main([*args, "--split", "train"]) == EXIT_CONFIG
    assert "no 'train' games" in capsys.readouterr().err


# ---- the scripted actor: needs the alfworld package --------------------------------------------

_NAME = r"[a-z]+ \d+"
COMMAND = re.compile(
    rf"^(?:look|go to {_NAME}|open {_NAME}|examine {_NAME}|take {_NAME} from {_NAME}|move {_NAME} to {_NAME}"
    rf"|(?:heat|cool|clean) {_NAME} with {_NAME}|use {_NAME})$"
)
"""The game's command forms the scripted actor may write."""
SEARCH_STEPS = 12
"""A step limit that makes the search the bottleneck: at 50 the scripted actor finds and
delivers the object without any advice (median 17 steps), while every walkthrough fits in 12."""


def scripted_play(env, task: Task, reflections: tuple[str, ...] = ()) -> Trajectory:
    """One trial of the scripted actor within ``SEARCH_STEPS``, its tie-breaks seeded as the
    trial loop seeds them (run seed, task, reflections, step); each command is checked against
    the game's admissible ones, which the actor itself never sees."""
    seed = f"0|{task.task_id}|" + "|".join(reflections)

    def act(e) -> str:
        action = e.scripted_action(list(reflections), random.Random(f"{seed}|step{e.steps_taken}"))
        assert COMMAND.match(action), action
        if not reflections:
            assert action in e.admissible_commands, action
        return action

    env.max_steps = SEARCH_STEPS
    try:
        return play(env, task, act)
    finally:
        env.max_steps = env.options.max_steps


def test_scripted_actor_repeats_a_failed_trial_with_admissible_commands(env) -> None:
    """Without a reflection nothing changes between trials: the retry replays the failure."""
    task = env.tasks("test", 2)[1]  # a game the scripted actor cannot finish in SEARCH_STEPS
    first = scripted_play(env, task)
    assert not first.won and len(first.steps) == SEARCH_STEPS
    assert [s.action for s in scripted_play(env, task).steps] == [s.action for s in first.steps]


def test_scripted_actor_goes_first_where_advice_says(env) -> None:
    from retro_ray.envs.benchmarks.alfworld_reflect import Goal, item_list

    (task,) = env.tasks("test", 1)
    first = env.reset(task)
    goal = Goal.from_task_text(first)
    room = item_list(first.split("you see ")[1].split(".")[0])
    place = next(p for p in reversed(room) if f"go to {p}" != env.walkthrough[0])
    hinted = scripted_play(env, task, (f"I saw {goal.obj} 7 at {place}.",))
    assert hinted.steps[0].action == f"go to {place}"
    truth = env.ground_truth_reflection(task)
    played = scripted_play(env, task, (truth,))
    assert played.won and [s.action for s in played.steps] == env.walkthrough


# about 5 s: 12 games, three trials each, four reflectors (25-45 s before textworld_speedups)
def test_reflections_of_a_failed_trial_help_the_scripted_actor(env) -> None:
    """Without a reflection a retry replays the failed trial (tested above). With the ground
    truth it wins. With the trajectory oracle it searches only places the failed trial did not
    rule out, and wins some. A misleading reflection sends it back to a searched place."""
    failed = [(task, t) for task in env.tasks("test", 4) if not (t := scripted_play(env, task)).won]
    assert len(failed) >= 2
    truth = oracle = 0
    for task, trial in failed:
        truth += scripted_play(env, task, (env.ground_truth_reflection(task),)).won
        advised = scripted_play(env, task, (env.trajectory_oracle(trial, []),))
        oracle += advised.won
        searched = _searched_without_the_object(trial)
        assert not searched & set(_places_before_the_object(advised))
        misled = env.misleading_reflection(trial, random.Random(0))
        env.reset(task)
        assert env.scripted_action([misled], random.Random(0)).removeprefix("go to ") in searched
    assert truth == len(failed) and oracle >= 1


def _searched_without_the_object(trajectory: Trajectory) -> set[str]:
    """The places whose contents the trial saw, none of them the task's object."""
    from retro_ray.envs.benchmarks.alfworld_reflect import Goal, of_kind, read_trajectory

    obj = Goal.from_task_text(trajectory.first_observation).obj
    contents = read_trajectory(trajectory, 50).contents
    return {p for p, things in contents.items() if not any(of_kind(t, obj) for t in things)}


def _places_before_the_object(trajectory: Trajectory) -> list[str]:
    """The places a trial went to before it first saw an instance of the task's object."""
    from retro_ray.envs.benchmarks.alfworld_reflect import Goal

    obj = Goal.from_task_text(trajectory.first_observation).obj
    places = []
    for step in trajectory.steps:
        if re.search(rf"\b{obj} \d+", step.observation):
            break
        if step.action.startswith("go to "):
            places.append(step.action.removeprefix("go to "))
    return places


def test_textworld_caches_change_no_text(env) -> None:
    """``textworld_speedups`` caches TextWorld's PDDL translation and template parsing and copies
    its contexts shallowly: two games of two trials each, played with and without the caches,
    must show the same observations, admissible commands and outcomes."""
    from retro_ray.envs.benchmarks import textworld_speedups

    def record() -> list:
        log: list = []
        for task in env.tasks("test", 3)[1:]:
            for _ in range(2):
                trial = scripted_play(env, task)
                log.append((trial.first_observation, trial.won, env.admissible_commands))
                log += [(s.action, s.observation, s.reward) for s in trial.steps]
        return log

    assert textworld_speedups.installed()  # loading TextWorld installed them
    cached = record()
    textworld_speedups.uninstall()
    try:
        plain = record()
    finally:
        textworld_speedups.install()
    assert len(cached) > 20 and cached == plain
