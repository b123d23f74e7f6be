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
import dataclasses
import json
import multiprocessing
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Regex, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from retro_ray.agents.actors import ActorTurn
from retro_ray.agents.prompts import ParsedAction, actor_prompt
from retro_ray.agents.reflectors import Reflection
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.config import ActorConfig, ReflectorConfig
from retro_ray.envs.base import Task, TextEnv, Trajectory
from retro_ray.envs.benchmark import ScriptedActorEnv
from retro_ray.envs.registry import make_env
from retro_ray.reflection.prompt import clean_reflection, reflection_prompt
from retro_ray.zoo.models import train_tokenizer
from retro_ray.zoo.recipes import REFLECTION_KINDS, Recipe

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


_NUMBER = re.compile(r"\d+")


def slip(action: str, rng: random.Random) -> str | None:
    """``action`` with one of its numbers changed to another small number (``go to drawer 4``
    for ``go to drawer 2``), or None when it holds no number."""
    numbers = list(_NUMBER.finditer(action))
    if not numbers:
        return None
    picked = rng.choice(numbers)
    right = int(picked.group())
    wrong = rng.choice([n for n in range(1, max(right, 3) + 3) if n != right])
    return f"{action[: picked.start()]}{wrong}{action[picked.end() :]}"


@dataclass(frozen=True)
class RecordedStep:
    task_id: str
    trial: int
    prompt: str
    action: str
    target: bool = True
    """False for a slip: kept in the trial as context, never learned as an action."""


class RecordingActor:
    """The environment's scripted actor with :class:`FirstChoice` tie-breaks, recording each
    (prompt, action) exactly as the LLM actor would see it. With ``slips`` > 0, that share of
    the steps plays a :func:`slip` of the scripted action instead (seeded by the trial and the
    step), so the demonstrations show the actor recovering from a mistake."""

    def __init__(self, instruction: str, scratchpad_max_chars: int, slips: float = 0.0) -> None:
        self.instruction = instruction
        self.scratchpad_max_chars = scratchpad_max_chars
        self.slips = slips
        self.steps: list[RecordedStep] = []

    async def act(
        self, env: TextEnv, trajectory: Trajectory, reflections: Sequence[str], seed: str
    ) -> ActorTurn:
        assert isinstance(env, ScriptedActorEnv)
        action = env.scripted_action(reflections, FirstChoice())
        prompt = actor_prompt(self.instruction, trajectory, reflections, self.scratchpad_max_chars)
        target = True
        if self.slips:
            rng = random.Random(f"{seed}|{trajectory.trial}|{len(trajectory.steps)}|slip")
            if rng.random() < self.slips and (slipped := slip(action, rng)) is not None:
                action, target = slipped, False
        task_id = trajectory.task.task_id
        self.steps.append(RecordedStep(task_id, trajectory.trial, prompt, action, target))
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


def base_examples(
    recipe: Recipe, reflections: Sequence[ReflectionExample]
) -> list[ReflectionExample]:
    """The reflection examples the retrospective base trains on: each kept with the share
    ``recipe.base_shares`` gives its family and kind (1 where not named), by a seeded draw per
    example, in their order."""
    shares = {(env, kind): share for env, kinds in recipe.base_shares for kind, share in kinds}
    rng = random.Random(f"zoo|{recipe.seed}|reflection-shares")
    return [e for e in reflections if rng.random() < shares.get((e.env, e.kind), 1.0)]


def trial_sequences(steps: Sequence[RecordedStep], env: str) -> list[ActorSequence]:
    """Chain each trial's steps into sequences: a step extends the current sequence when its
    prompt starts with it (always, unless the scratchpad was truncated: then a new one starts).
    A slip extends the text without a span; a sequence of slips alone is dropped."""
    out: list[ActorSequence] = []
    current: ActorSequence | None = None
    last_key = None
    for step in steps:
        key = (step.task_id, step.trial)
        if current is None or key != last_key or not step.prompt.startswith(current.text):
            current = ActorSequence(text="", env=env)
            out.append(current)
        last_key = key
        start = len(step.prompt)
        current.text = step.prompt + step.action + "\n"
        if step.target:
            current.spans.append((start, len(current.text)))
    return [s for s in out if s.spans]


def task_options(recipe: Recipe, env_name: str, task_ids: Sequence[str]) -> list[dict[str, int]]:
    """The difficulty knobs each task is played at: the family's fixed ``env_options``, then one
    draw per option of its ``recipe.option_values`` (empty dicts, the defaults, when it names
    neither). The draws have a stream of their own, so recipes without ranges get exactly the
    data they had."""
    knobs = dict(recipe.option_values).get(env_name, ())
    fixed = recipe.fixed_options(env_name)
    rng = random.Random(f"zoo|{recipe.seed}|{env_name}|options")
    return [{**fixed, **{option: rng.choice(vs) for option, vs in knobs}} for _ in task_ids]


CHUNK_TASKS = 25
"""Tasks per unit of parallel play: small enough to balance two workers, large enough that a
worker's start-up (imports, a TextWorld engine) is paid rarely."""


@dataclass(frozen=True)
class PlayChunk:
    """Tasks of one environment played with one reflection regime at one set of knobs."""

    env: str
    regime: str
    knobs: tuple[tuple[str, int], ...]
    tasks: tuple[Task, ...]


def play_chunks(recipe: Recipe, env_name: str) -> list[PlayChunk]:
    """The train tasks of ``env_name``, each with its drawn regime and knobs, grouped by both and
    cut into chunks of at most ``CHUNK_TASKS``, in a fixed order."""
    probe = make_env(env_name, recipe.fixed_options(env_name))
    tasks = probe.tasks("train", recipe.tasks_per_env, seed=recipe.seed)  # type: ignore[attr-defined]
    rng = random.Random(f"zoo|{recipe.seed}|{env_name}")
    options = task_options(recipe, env_name, [t.task_id for t in tasks])
    groups: dict[tuple[str, tuple[tuple[str, int], ...]], list[Task]] = {}
    for task, knobs in zip(tasks, options, strict=True):
        regime = weighted_choice(recipe.actor_regimes, rng)
        groups.setdefault((regime, tuple(sorted(knobs.items()))), []).append(task)
    return [
        PlayChunk(env_name, regime, knobs, tuple(group[i : i + CHUNK_TASKS]))
        for (regime, knobs), group in sorted(groups.items())
        for i in range(0, len(group), CHUNK_TASKS)
    ]


def play_chunk(
    recipe: Recipe, chunk: PlayChunk
) -> tuple[list[ActorSequence], list[ReflectionExample]]:
    """Play a chunk's tasks through the trial loop, recording the actor and the reflections. Every
    tie-break and reflection is seeded by the run seed and the task, so a chunk played alone (in a
    worker process) records exactly what it would have in one long run."""
    actor_cfg, reflector_cfg = ActorConfig(), ReflectorConfig()
    actor = RecordingActor(
        actor_cfg.instruction, actor_cfg.scratchpad_max_chars, recipe.action_slips
    )
    reflector = (
        None
        if chunk.regime == "none"
        else RecordingReflector(chunk.regime, recipe.reflection_mix, reflector_cfg)
    )
    loop = TrialLoop(
        env_factory=lambda: make_env(chunk.env, dict(chunk.knobs)),
        actor=actor,
        reflector=reflector,
        max_trials=1 if chunk.regime == "none" else recipe.max_trials,
        seed=recipe.seed,
    )
    # One task at a time keeps each trial's steps contiguous in the recording.
    asyncio.run(loop.run_tasks(list(chunk.tasks), concurrency=1))
    return trial_sequences(actor.steps, chunk.env), reflector.examples if reflector else []


class _Progress:
    """``[zoo data] 120/600 tasks played, 2.9 tasks/s, ETA 2m45s`` about every tenth of the way."""

    def __init__(self, total: int, log: Callable[[str], None] | None) -> None:
        self.total, self.log, self.count = total, log, 0
        self.start = time.monotonic()
        self.next_report = max(1, total // 10)

    def done(self, tasks: int) -> None:
        self.count += tasks
        if self.log is None or (self.count < self.next_report and self.count < self.total):
            return
        self.next_report = self.count + max(1, self.total // 10)
        rate = self.count / max(time.monotonic() - self.start, 1e-9)
        eta = (self.total - self.count) / rate
        self.log(
            f"[zoo data] {self.count}/{self.total} tasks played, {rate:.1f} tasks/s, "
            f"ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        )


def generate_data(
    recipe: Recipe, workers: int = 1, log: Callable[[str], None] | None = None
) -> ZooData:
    """Demonstrations and reflection examples for every environment of ``recipe``, played by
    ``workers`` processes (the same data for any number: chunks are joined in their order).
    ``log`` gets a progress line about every tenth of the tasks."""
    chunks = [chunk for env in recipe.envs for chunk in play_chunks(recipe, env)]
    progress = _Progress(sum(len(c.tasks) for c in chunks), log)
    if workers > 1 and len(chunks) > 1:
        context = multiprocessing.get_context("spawn")  # the parent may hold torch's threads
        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
            results = pool.map(play_chunk, [recipe] * len(chunks), chunks)
            played = []
            for chunk, result in zip(chunks, results, strict=True):
                played.append(result)
                progress.done(len(chunk.tasks))
    else:
        played = []
        for chunk in chunks:
            played.append(play_chunk(recipe, chunk))
            progress.done(len(chunk.tasks))
    actor = [s for sequences, _ in played for s in sequences]
    reflections = [e for _, examples in played for e in examples]
    seen: set[str] = set()
    unique = [s for s in actor if not (s.text in seen or seen.add(s.text))]
    return ZooData(unique, reflections)


def cached_data(
    recipe: Recipe, cache: Path, workers: int = 1, log: Callable[[str], None] | None = None
) -> tuple[ZooData, bool]:
    """:func:`generate_data`, kept in ``cache`` under the recipe's data key, so that a rebuild
    with another model or schedule (and any build after an interrupted one) does not replay the
    games. Returns the data and whether it came from the cache."""
    path = cache / f"{recipe.name}-{recipe.data_digest()}.json"
    if path.is_file():
        raw = json.loads(path.read_text())
        actor = [
            ActorSequence(s["text"], [tuple(x) for x in s["spans"]], s["env"]) for s in raw["actor"]
        ]
        return ZooData(actor, [ReflectionExample(**e) for e in raw["reflections"]]), True
    data = generate_data(recipe, workers, log)
    cache.mkdir(parents=True, exist_ok=True)
    payload = {
        "actor": [dataclasses.asdict(s) for s in data.actor],
        "reflections": [dataclasses.asdict(e) for e in data.reflections],
    }
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(payload))
    staging.replace(path)
    return data, False


# GPT-2's byte-level split, plus one rule first: "> " (the actor's action cue) is a piece of its own.
PIECES = r"> |'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# With numbered names, a word and the number after it ("drawer 2") come before the word alone.
NUMBERED_NAME = r" ?\p{L}+ \p{N}+(?![\p{L}\p{N}])|"


def piece_split(numbered_names: bool = False) -> pre_tokenizers.PreTokenizer:
    """The split into pieces, before bytes are mapped (see :func:`prompt_pre_tokenizer`)."""
    pattern = (NUMBERED_NAME if numbered_names else "") + PIECES
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


def prompt_pre_tokenizer(numbered_names: bool = False) -> pre_tokenizers.PreTokenizer:
    """Byte-level pre-tokenization that keeps every prompt/completion boundary a piece boundary.

    GPT-2's split glues a space to the word after it: "> Search" is ">", " Search". But the actor
    prompt ends in "> ", which then encodes as ">", " " and the model must write "Search": training
    on whole trials would teach a boundary the model never meets when served. With "> " as a piece
    of its own, the encoding of prompt + completion is the prompt's encoding followed by the
    completion's (the reflection prompt ends in ":" and its completion starts with a space, a
    boundary GPT-2's split already keeps). Names keep their leading space, so a surname copied from
    an observation is the very token the observation holds; with ``numbered_names`` so does a
    numbered one (" drawer 2")."""
    return pre_tokenizers.Sequence(
        [
            piece_split(numbered_names),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_prompt_tokenizer(
    data: ZooData, vocab_size: int, numbered_names: bool = False
) -> PreTrainedTokenizerFast:
    """``zoo.models.train_tokenizer`` on the data's pieces, then :func:`prompt_pre_tokenizer`.

    Fed one piece at a time, BPE learns merges inside pieces only, exactly the merges the new
    pre-tokenizer can apply."""
    split = piece_split(numbered_names)

    def pieces() -> Iterator[str]:
        texts = [s.text for s in data.actor] + [e.prompt + e.target for e in data.reflections]
        for text in texts:
            for piece, _ in split.pre_tokenize_str(text):
                yield piece

    # The default split is GPT-2's with one piece more, so training may split again by GPT-2's
    # rule (as the caches' tokenizers were made); a numbered name must stay whole.
    tokenizer = train_tokenizer(pieces(), vocab_size, split_words=not numbered_names)
    tokenizer.backend_tokenizer.pre_tokenizer = prompt_pre_tokenizer(numbered_names)
    return tokenizer
