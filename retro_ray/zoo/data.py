"""Supervised data of the zoo: actor demonstrations and reflections of mixed quality, produced by
the environments' scripted actor through the real trial loop.

The scripted actor sees only what an LLM actor sees (observations and notes) and follows whatever
advice the notes carry, so its demonstrations teach a model to act on reflections, never to guess
hidden facts (the omniscient expert would). Every prompt is rendered by the very functions the LLM
actor and the LLM reflector call at inference (``actor_prompt``, ``reflection_prompt``) with the
default instructions, so the models are trained on exactly the text they will be served.

A trial becomes one sequence: the prompt of step t+1 extends the prompt of step t by the action,
a newline and the observation, so one forward pass over the last prompt plus its action trains every
action of the trial (loss on each action and the newline that ends it). That is only exact if the
tokenizer encodes "prompt + action" as the prompt's tokens followed by the action's, which
:func:`prompt_pre_tokenizer` guarantees (the tests check it on every step).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Regex, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from retro_ray.agents.actors import ActorTurn
from retro_ray.agents.prompts import ParsedAction, actor_prompt
from retro_ray.agents.reflectors import Reflection
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.config import ActorConfig, ReflectorConfig
from retro_ray.envs.base import TextEnv, Trajectory
from retro_ray.envs.benchmark import ScriptedActorEnv
from retro_ray.envs.registry import make_env
from retro_ray.reflection.prompt import clean_reflection, reflection_prompt
from retro_ray.zoo.models import train_tokenizer
from retro_ray.zoo.recipes import Recipe

REFLECTION_KINDS = ("vague", "trajectory_oracle", "ground_truth", "misleading")
REGIMES = ("none", *REFLECTION_KINDS, "mixed")


@dataclass
class ActorSequence:
    """One trial as text, with the character spans the loss covers (each action plus newline)."""

    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)
    env: str = ""


@dataclass(frozen=True)
class ReflectionExample:
    """Input ``prompt`` (as LLMReflector renders it) and ``target`` (completion, newline ended)."""

    prompt: str
    target: str
    kind: str
    env: str


@dataclass
class ZooData:
    actor: list[ActorSequence]
    reflections: list[ReflectionExample]


def weighted_choice(weights: Sequence[tuple[str, float]], rng: random.Random) -> str:
    names = [name for name, _ in weights]
    return rng.choices(names, weights=[w for _, w in weights])[0]


def write_reflection(
    env: ScriptedActorEnv,
    kind: str,
    trajectory: Trajectory,
    memory: Sequence[str],
    rng: random.Random,
) -> str:
    """A reflection of ``kind`` on a failed trial, written by the environment's code."""
    if kind == "trajectory_oracle":
        return env.trajectory_oracle(trajectory, memory)
    if kind == "ground_truth":
        return env.ground_truth_reflection(trajectory.task)
    if kind == "vague":
        return env.vague_reflection(trajectory, rng)
    if kind == "misleading":
        return env.misleading_reflection(trajectory, rng)
    raise ValueError(f"unknown reflection kind {kind!r}; expected one of {REFLECTION_KINDS}")


class FirstChoice(random.Random):
    """A tie-breaker that always takes the first option, in the order the observation or the note
    lists it. A greedy model cannot imitate a uniform choice (its argmax is some arbitrary
    option, or one it should have excluded); it learns "the first open option" quickly."""

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[0]


class RecordingActor:
    """The environment's scripted actor with :class:`FirstChoice` tie-breaks, recording each
    (prompt, action) exactly as the LLM actor would see it."""

    def __init__(self, instruction: str, scratchpad_max_chars: int) -> None:
        self.instruction = instruction
        self.scratchpad_max_chars = scratchpad_max_chars
        self.steps: list[tuple[str, int, str, str]] = []  # (task id, trial, prompt, action)

    async def act(
        self, env: TextEnv, trajectory: Trajectory, reflections: Sequence[str], seed: str
    ) -> ActorTurn:
        assert isinstance(env, ScriptedActorEnv)
        action = env.scripted_action(reflections, FirstChoice())
        prompt = actor_prompt(self.instruction, trajectory, reflections, self.scratchpad_max_chars)
        self.steps.append((trajectory.task.task_id, trajectory.trial, prompt, action))
        return ActorTurn(ParsedAction("action", action))


class RecordingReflector:
    """Puts a reflection of the task's regime into the memory and records, for the retrospective
    base, the reflection prompt with a target drawn from ``mix`` (for the ``mixed`` regime the
    memory holds that very target, as it will when the base reflector writes the notes)."""

    name = "zoo-data"

    def __init__(self, regime: str, mix: Sequence[tuple[str, float]], cfg: ReflectorConfig) -> None:
        self.regime = regime
        self.mix = mix
        self.cfg = cfg
        self.examples: list[ReflectionExample] = []

    async def reflect(
        self, env: TextEnv, trajectory: Trajectory, memory: Sequence[str], seed: str
    ) -> Reflection:
        assert isinstance(env, ScriptedActorEnv)
        rng = random.Random(f"{seed}|zoo-reflection")
        target_kind = weighted_choice(self.mix, rng)
        target = clean_reflection(
            write_reflection(env, target_kind, trajectory, memory, rng), self.cfg.max_chars
        )
        prompt = reflection_prompt(
            self.cfg.instruction, trajectory, memory, self.cfg.trajectory_max_chars
        )
        self.examples.append(ReflectionExample(prompt, f" {target}\n", target_kind, env.name))
        if self.regime == "mixed":
            return Reflection(target, prompt)
        text = write_reflection(env, self.regime, trajectory, memory, rng)
        return Reflection(clean_reflection(text, self.cfg.max_chars), prompt)


def trial_sequences(steps: Sequence[tuple[str, int, str, str]], env: str) -> list[ActorSequence]:
    """Chain each trial's steps into sequences: a step extends the current sequence when its
    prompt starts with it (always, unless the scratchpad was truncated: then a new one starts)."""
    out: list[ActorSequence] = []
    current: ActorSequence | None = None
    last_key = None
    for task_id, trial, prompt, action in steps:
        if current is None or (task_id, trial) != last_key or not prompt.startswith(current.text):
            current = ActorSequence(text="", env=env)
            out.append(current)
        last_key = (task_id, trial)
        start = len(prompt)
        current.text = prompt + action + "\n"
        current.spans.append((start, len(current.text)))
    return out


def task_options(recipe: Recipe, env_name: str, task_ids: Sequence[str]) -> list[dict[str, int]]:
    """The difficulty knobs each task is played at: one draw per option of
    ``recipe.option_values`` for the family (empty dicts, the defaults, when it names none). The
    draws have a stream of their own, so recipes without ranges get exactly the data they had."""
    knobs = dict(recipe.option_values).get(env_name, ())
    rng = random.Random(f"zoo|{recipe.seed}|{env_name}|options")
    return [{option: rng.choice(values) for option, values in knobs} for _ in task_ids]


async def _play_env(
    recipe: Recipe, env_name: str
) -> tuple[list[ActorSequence], list[ReflectionExample]]:
    actor_cfg, reflector_cfg = ActorConfig(), ReflectorConfig()
    probe = make_env(env_name)
    tasks = probe.tasks("train", recipe.tasks_per_env, seed=recipe.seed)  # type: ignore[attr-defined]
    rng = random.Random(f"zoo|{recipe.seed}|{env_name}")
    options = task_options(recipe, env_name, [t.task_id for t in tasks])
    groups: dict[tuple[str, tuple[tuple[str, int], ...]], list] = {}
    for task, knobs in zip(tasks, options, strict=True):
        regime = weighted_choice(recipe.actor_regimes, rng)
        groups.setdefault((regime, tuple(sorted(knobs.items()))), []).append(task)
    sequences: list[ActorSequence] = []
    reflections: list[ReflectionExample] = []
    for (regime, knobs), group_tasks in sorted(groups.items()):
        actor = RecordingActor(actor_cfg.instruction, actor_cfg.scratchpad_max_chars)
        reflector = (
            None
            if regime == "none"
            else RecordingReflector(regime, recipe.reflection_mix, reflector_cfg)
        )
        loop = TrialLoop(
            env_factory=lambda knobs=knobs: make_env(env_name, dict(knobs)),
            actor=actor,
            reflector=reflector,
            max_trials=1 if regime == "none" else recipe.max_trials,
            seed=recipe.seed,
        )
        # One task at a time keeps each trial's steps contiguous in the recording.
        await loop.run_tasks(group_tasks, concurrency=1)
        sequences += trial_sequences(actor.steps, env_name)
        if reflector is not None:
            reflections += reflector.examples
    return sequences, reflections


def generate_data(recipe: Recipe) -> ZooData:
    """Demonstrations and reflection examples for every environment of ``recipe``."""
    actor: list[ActorSequence] = []
    reflections: list[ReflectionExample] = []
    for env_name in recipe.envs:
        sequences, examples = asyncio.run(_play_env(recipe, env_name))
        actor += sequences
        reflections += examples
    seen: set[str] = set()
    unique = [s for s in actor if not (s.text in seen or seen.add(s.text))]
    return ZooData(unique, reflections)


# GPT-2's byte-level split, plus one rule first: "> " (the actor's action cue) is a piece of its own.
PIECES = Regex(r"> |'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


def prompt_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Byte-level pre-tokenization that keeps every prompt/completion boundary a piece boundary.

    GPT-2's split glues a space to the word after it: "> Search" is ">", " Search". But the actor
    prompt ends in "> ", which then encodes as ">", " " and the model must write "Search": training
    on whole trials would teach a boundary the model never meets when served. With "> " as a piece
    of its own, the encoding of prompt + completion is the prompt's encoding followed by the
    completion's (the reflection prompt ends in ":" and its completion starts with a space, a
    boundary GPT-2's split already keeps). Names keep their leading space, so a surname copied from
    an observation is the very token the observation holds."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(PIECES, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_prompt_tokenizer(data: ZooData, vocab_size: int) -> PreTrainedTokenizerFast:
    """``zoo.models.train_tokenizer`` on the data's pieces, then :func:`prompt_pre_tokenizer`.

    Fed one piece at a time, BPE learns merges inside pieces only, exactly the merges the new
    pre-tokenizer can apply."""
    split = prompt_pre_tokenizer()

    def pieces() -> Iterator[str]:
        texts = [s.text for s in data.actor] + [e.prompt + e.target for e in data.reflections]
        for text in texts:
            for piece, _ in pre_tokenizers.Split(PIECES, behavior="isolated").pre_tokenize_str(
                text
            ):
                yield piece

    tokenizer = train_tokenizer(pieces(), vocab_size)
    tokenizer.backend_tokenizer.pre_tokenizer = split
    return tokenizer
