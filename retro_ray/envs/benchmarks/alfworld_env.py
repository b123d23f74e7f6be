"""``alfworld``: ALFWorld's text household games through the ``alfworld`` package (0.4.2).

Each game is played by TextWorld's PDDL engine with alfworld's ``AlfredDemangler`` (which turns
the PDDL ids into the names players see, ``bowl 1``, ``cabinet 4``), one game file at a time.
alfworld's ``AlfredTWEnv`` is not used: it batches many games behind a gym interface, needs a
config file and a ``traj_data.json`` beside each game, and adds nothing a single game needs.

What the actor sees and does, and two traps of these game files:

* The first observation is the room and the task (``Your task is to: ...``), without the banner.
* The games' verb is ``move X to Y``; prompts written for older ALFWorld say ``put X in/on Y``,
  which the games answer with "Nothing happens.". Those forms are read as ``move`` (option).
* A command the game does not know (any non-admissible one) gets the game's own "Nothing
  happens." and counts as a step. ``info["admissible_commands"]`` lists the valid ones.
* Success is the game's ``won``, never ``done``: a trial also ends when the step limit runs out.

Trials of one task reuse the loaded game. The TextWorld engines are pooled and reused across
environment objects, because each holds its own copy of fast-downward's native library, which is
never unloaded: building one per task would grow a long-running rollout worker without bound.

TextWorld redoes much identical work (it translates a game's PDDL on every reset and parses its
grammar templates on every step); ``textworld_speedups`` caches it, the first time this module
loads TextWorld. Measured on 10 evaluation games x 3 trials of the scripted actor (2 cores): a step
0.112 s -> 0.009 s, a reset (first load of the game included) 1.6 s -> 0.43 s, the same text.

The scripted actor (``alfworld_play.ScriptedPlay``) reads only what an LLM actor's prompt holds
and follows the advice of its reflections, good or bad; ``misleading_reflection`` writes the bad
kind.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retro_ray.envs.base import Step, StepResult, Task, Trajectory, check_split
from retro_ray.envs.benchmark import ScriptedActorEnv
from retro_ray.envs.benchmarks import textworld_speedups
from retro_ray.envs.benchmarks.alfworld_data import (
    AlfworldDataError,
    GameRef,
    game_path,
    index_games,
    load_game,
)
from retro_ray.envs.benchmarks.alfworld_play import ScriptedPlay
from retro_ray.envs.benchmarks.alfworld_reflect import (
    Goal,
    ground_truth_text,
    misleading_text,
    oracle_reflection,
    read_advice,
    read_trajectory,
)
from retro_ray.envs.builtin.common import EPISODE_OVER, STEP_LIMIT_NOTE
from retro_ray.envs.registry import EnvSpec, register

NOTHING = "Nothing happens."
_BANNER = re.compile(r"^\s*-= .*? =-\s*")
_PUT = re.compile(r"^put (?P<obj>.+?) (?:in/on|in|on|into|onto|inside) (?P<dest>.+)$")
_NEUTRAL = re.compile(r"^(?:look|inventory|help|examine .+)$")
"""Commands that never change the game state (they only describe it)."""
INSTALL_HINT = "pip install 'retro_ray[alfworld]'"


class AlfworldUnavailable(ImportError, ValueError):
    """The ``alfworld`` extra is not installed. Also a ValueError, so that the command line reports
    it in one line, like a configuration error, instead of a traceback."""


@dataclass(frozen=True)
class AlfworldOptions:
    max_steps: int = 50
    """Step limit of one trial: ReAct and Reflexion gave the actor about 50 actions per game. The
    scripted actor searches so methodically that 50 steps let it win almost every game without
    advice (median 17 steps on the evaluation games); about 12 (every walkthrough fits) makes the
    search the bottleneck, so that what a reflection says decides the next trial."""
    put_alias: bool = True
    """Read ``put X in Y``, ``put X on Y`` and ``put X in/on Y`` as the games' ``move X to Y``:
    prompts and models built for older ALFWorld releases use ``put``."""
    invalid_hint: bool = False
    """Append a few admissible commands to "Nothing happens.". Off by default: the published ReAct,
    Reflexion and Retroformer runs showed the game's bare answer, and results should stay
    comparable with them; turn it on for weak actors."""

    def validate(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


# ---- the TextWorld engines, loaded lazily and pooled ----------------------------------------

_IDLE_ENGINES: list[Any] = []
_ENGINES_MADE = 0
_POOL_LOCK = threading.Lock()
_PLAY_LOCK = threading.Lock()
"""Held by every reset and step when the trial loop runs them in threads (``io_lock``): the PDDL
translator keeps global state and rewrites ``sys.argv``, so one game is played at a time."""


def _textworld() -> tuple[Any, Any]:
    """The ``textworld`` module and alfworld's demangler; a clear error without the extra."""
    try:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    except ImportError as exc:
        raise AlfworldUnavailable(
            f"the alfworld environment needs the alfworld package ({exc}): {INSTALL_HINT}"
        ) from exc
    textworld_speedups.install()
    return textworld, AlfredDemangler


def _engine(path: Path) -> Any:
    """A TextWorld engine with ``path`` loaded: an idle pooled one if any, else a new one."""
    textworld, demangler = _textworld()
    with _POOL_LOCK:
        engine = _IDLE_ENGINES.pop() if _IDLE_ENGINES else None
    if engine is not None:
        engine.load(str(path))
        return engine
    infos = textworld.EnvInfos(won=True, admissible_commands=True)
    engine = textworld.start(str(path), infos, wrappers=[demangler(shuffle=False)])
    global _ENGINES_MADE
    with _POOL_LOCK:
        _ENGINES_MADE += 1
        textworld_speedups.keep_games(_ENGINES_MADE)  # every game in play keeps its translation
    return engine


@contextmanager
def _keep_argv() -> Iterator[None]:
    """fast-downward's PDDL translator overwrites ``sys.argv`` on every game load and reset (its
    option parser reads it); restore the process's own afterwards."""
    saved = sys.argv
    try:
        yield
    finally:
        sys.argv = saved


def _release(engine: Any) -> None:
    with _POOL_LOCK:
        _IDLE_ENGINES.append(engine)


class AlfworldEnv(ScriptedActorEnv):
    name = "alfworld"
    Options = AlfworldOptions
    blocking_io = True  # game files and PDDL parsing: off the event loop (see agents.trial_loop)
    io_lock = _PLAY_LOCK

    def __init__(self, options: AlfworldOptions | None = None, data_path: str | None = None):
        _textworld()  # fail now, with the install hint, rather than at the first reset
        self.options = options or AlfworldOptions()
        self.max_steps = self.options.max_steps
        self.data_path = data_path
        self._games: dict[str, GameRef] | None = None
        self._engine: Any = None
        self._engine_finalizer: weakref.finalize | None = None
        self._loaded: Path | None = None
        self.task: Task | None = None
        self.first_observation = ""
        self.log: list[tuple[str, str]] = []  # this trial's (action, observation): the actor's view
        self.walkthrough: list[str] = []
        self._admissible: list[str] = []
        self.steps_taken = 0
        self.done = self.won = False
        self._script_pos = 0  # walkthrough actions taken so far, while the play follows it
        self._on_script = True

    # ---- tasks ----------------------------------------------------------------------------

    def games(self) -> dict[str, GameRef]:
        if self._games is None:
            self._games = {ref.task_id: ref for ref in index_games(self.data_path)}
        return self._games

    def tasks(self, split: str, n: int, seed: int = 0) -> list[Task]:
        """Up to ``n`` games of ``split``, ordered by a hash of (seed, task id): any prefix mixes
        the six task types, and all the games when ``n`` is at least their number."""
        check_split(split)
        refs = [r for r in self.games().values() if r.split == split]
        if not refs:
            found = sorted({r.split for r in self.games().values()})
            raise AlfworldDataError(
                f"no {split!r} games in {self.data_path or 'the default ALFWorld data'} "
                f"(it holds {', '.join(found)}); train and validation games come from train.tgz"
            )
        refs.sort(key=lambda r: hashlib.sha256(f"{seed}|{r.task_id}".encode()).digest())
        return [
            Task(self.name, r.task_id, r.split, payload={"task_type": r.task_type})
            for r in refs[: max(n, 0)]
        ]

    def _ref(self, task: Task) -> GameRef:
        if task.env != self.name:
            raise ValueError(
                f"task {task.task_id!r} belongs to env {task.env!r}, not {self.name!r}"
            )
        ref = self.games().get(task.task_id)
        if ref is None:
            raise AlfworldDataError(f"no ALFWorld game {task.task_id!r} in {self.data_path}")
        return ref

    # ---- playing --------------------------------------------------------------------------

    def reset(self, task: Task) -> str:
        path = game_path(self._ref(task))
        if path != self._loaded:
            self.walkthrough = list(load_game(path).get("walkthrough") or [])
            self.close()
            try:
                with _keep_argv():
                    self._engine = _engine(path)
            except Exception as exc:  # the PDDL parser's errors have no common base class
                raise AlfworldDataError(f"cannot load the ALFWorld game {path}: {exc}") from exc
            self._engine_finalizer = weakref.finalize(self, _release, self._engine)
            self._loaded = path
        with _keep_argv():
            state = self._engine.reset()
        self.task = task
        self.steps_taken = 0
        self.done = self.won = False
        self._script_pos, self._on_script = 0, True
        self._admissible = list(state["admissible_commands"])
        self.first_observation = _BANNER.sub("", state.feedback).strip()
        self.log = []
        return self.first_observation

    def step(self, action: str) -> StepResult:
        if self.task is None:
            raise RuntimeError("call reset(task) before step(action)")
        if self.done:
            return StepResult(EPISODE_OVER, 0.0, True, self._info())
        self.steps_taken += 1
        command = self.command_for(action)
        state, _, _ = self._engine.step(command)
        observation = str(state.feedback).strip()
        self._follow_script(command, observation)
        self._admissible = list(state["admissible_commands"])
        reward = 1.0 if state["won"] and not self.won else 0.0
        self.won = bool(state["won"])
        self.done = self.won
        if observation == NOTHING and self.options.invalid_hint:
            observation += f" {self._hint()}"
        if not self.done and self.steps_taken >= self.max_steps:
            self.done = True
            observation = f"{observation} {STEP_LIMIT_NOTE}"
        self.log.append((action, observation))
        info = self._info()
        if command != action:
            info["command"] = command  # what the game was given
        return StepResult(observation, reward, self.done, info)

    def _hint(self) -> str:
        """Up to eight of the commands that act here, then the ever-valid forms."""
        here = [c for c in self._admissible if not c.startswith("go to ") and not _NEUTRAL.match(c)]
        return f"Valid here: {', '.join([*here[:8], 'go to <place>', 'look', 'inventory'])}."

    def command_for(self, action: str) -> str:
        """The game command for an actor's action: lower case, single spaces, no final period,
        and ``put X in/on Y`` read as ``move X to Y`` unless the game itself knows ``put``."""
        command = " ".join(action.strip().rstrip(".").lower().split())
        match = _PUT.match(command)
        if self.options.put_alias and match and command not in self._admissible:
            return f"move {match['obj']} to {match['dest']}"
        return command

    def _follow_script(self, command: str, observation: str) -> None:
        """Track whether the play so far is a prefix of the walkthrough (plus no-op commands)."""
        script = self.walkthrough
        if (
            self._on_script
            and self._script_pos < len(script)
            and command == script[self._script_pos]
        ):
            self._script_pos += 1
        elif observation != NOTHING and not _NEUTRAL.match(command):
            self._on_script = False

    def _info(self) -> dict[str, Any]:
        return {
            "won": self.won,
            "score": float(self.won),
            "steps": self.steps_taken,
            "admissible_commands": list(self._admissible),
        }

    @property
    def admissible_commands(self) -> list[str]:
        """The commands the game accepts in the current state."""
        return list(self._admissible)

    def close(self) -> None:
        """Hand the TextWorld engine back to the pool (also done when this object is collected)."""
        if self._engine_finalizer is not None:
            self._engine_finalizer()  # calls _release once
        self._engine = self._engine_finalizer = self._loaded = None

    # ---- reference policies and reflectors ------------------------------------------------

    def expert_action(self) -> str:
        """The walkthrough's next action while the play follows it; after a detour, the first
        action of a fresh plan from fast-downward for the current state."""
        if self._on_script and self._script_pos < len(self.walkthrough):
            return self.walkthrough[self._script_pos]
        plan = self._replan()
        return plan[0] if plan else "look"

    def _replan(self) -> list[str]:
        # TextWorld computes plans only as a requested info at each step; asking its PDDL state
        # directly (a private attribute) plans once, on demand, instead of at every step.
        engine = self._engine.unwrapped
        try:
            return list(engine._pddl_state.replan(engine._entity_infos))
        except AttributeError as exc:
            raise RuntimeError(f"this textworld version offers no planner access: {exc}") from exc

    def random_action(self, rng: random.Random) -> str:
        """A uniformly random admissible command, ``help`` aside (it describes the commands
        instead of acting, and its long answer would fill the trajectory)."""
        choices = [c for c in self._admissible if c != "help"]
        return rng.choice(choices) if choices else "look"

    def trajectory_oracle(self, trajectory: Trajectory, memory: Sequence[str]) -> str:
        return oracle_reflection(trajectory, memory, self.max_steps, self.options.put_alias)

    def ground_truth_reflection(self, task: Task) -> str:
        walkthrough = load_game(game_path(self._ref(task))).get("walkthrough") or []
        return ground_truth_text(list(walkthrough))

    def misleading_reflection(self, trajectory: Trajectory, rng: random.Random) -> str:
        """Confident, wrong advice in the oracle's own sentences (``misleading_text``): negative
        examples for the retrospective model, and a check that the scripted actor is hurt by
        what it trusts."""
        return misleading_text(trajectory, rng, self.max_steps)

    # ---- the scripted actor ---------------------------------------------------------------

    def scripted_action(self, reflections: Sequence[str], rng: random.Random) -> str:
        """A rule-based actor over what an LLM actor's prompt holds: the room and task of the
        first observation, this trial's actions and answers, and the reflections (never the
        walkthrough or the admissible commands). See ``ScriptedPlay`` for its rules."""
        trial = Trajectory(
            self.task or Task(self.name, "", "test"),
            0,
            self.first_observation,
            [Step(action, observation, 0.0) for action, observation in self.log],
        )
        goal = Goal.from_task_text(self.first_observation)
        play = ScriptedPlay(
            goal,
            read_trajectory(trial, self.max_steps),
            read_advice(reflections, goal),
            [action for action, _ in self.log],
            rng,
        )
        return play.next_action()


register(
    EnvSpec(
        name=AlfworldEnv.name,
        factory=AlfworldEnv,
        options_cls=AlfworldOptions,
        description="ALFWorld household text games (needs the alfworld extra)",
    )
)
