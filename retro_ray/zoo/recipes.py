"""Zoo recipes: everything that decides what ``retro-ray zoo build`` produces, in one frozen
dataclass, so that a hash of the recipe names the cache entry (change a field, get a new build).

Four recipes ship: ``default`` (the demo's models, a few minutes on 2 CPU cores; its actor
follows advice on ``lookup`` only), ``families`` (an actor that follows advice on all three
built-in families at their default knobs, about 30 minutes on one core), ``families_range`` (the
same with each task's knobs drawn from a range, about 45 minutes) and ``tiny`` (for tests: loadable,
non-degenerate models in well under a minute, not good ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from retro_ray.envs.registry import get_spec, make_env

ZOO_CODE_VERSION = 2
"""Bumped whenever the build code changes what a recipe produces (data, loss, tokenizer corpus):
it is part of the cache key, so a stale cache entry is never mistaken for a current one."""

ENVS: tuple[str, ...] = ("lookup", "household", "shop")

REFLECTION_KINDS = ("vague", "trajectory_oracle", "ground_truth", "misleading")
"""The kinds of reflection the environments write (``zoo.data.write_reflection``)."""


def _versioned_hash(label: str, content: dict) -> str:
    """12 hex digits of SHA-256 over ``content`` (under ``label``) and ``ZOO_CODE_VERSION``."""
    payload = json.dumps({"code_version": ZOO_CODE_VERSION, label: content}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def has_scripted_actor(env: str) -> bool:
    """Whether the registered environment ``env`` is a ``ScriptedActorEnv`` (the zoo's teacher)."""
    from retro_ray.envs.benchmark import ScriptedActorEnv

    try:
        factory = get_spec(env).factory
    except ValueError:
        return False
    return isinstance(factory, type) and issubclass(factory, ScriptedActorEnv)


@dataclass(frozen=True)
class ModelShape:
    """A tiny Llama. ``hidden_size / num_heads`` must be >= 64 (vLLM's CPU attention)."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 2
    """Attention heads (head_dim = hidden_size / num_heads)."""
    intermediate_size: int = 384
    """Width of the SwiGLU feed-forward layer."""
    max_positions: int = 640
    """Longest sequence (prompt plus completion) in tokens; longer training sequences are dropped."""


@dataclass(frozen=True)
class SFTSchedule:
    """One supervised fine-tuning run: AdamW, linear warm-up, cosine decay to 10% of ``lr``."""

    steps: int = 1200
    """Optimizer steps. The actor copies names from its context only after a few hundred steps
    (a sudden drop of the loss, around step 700 at the defaults), then learns to use the notes."""
    batch_size: int = 16
    """Sequences per step (batches are drawn from length-sorted pools to limit padding)."""
    lr: float = 3e-3
    """Peak learning rate (6e-3 learned to copy no sooner and ended at a higher loss)."""
    warmup_steps: int = 30
    """Steps of linear warm-up from 0 to ``lr``."""
    weight_decay: float = 0.01
    """AdamW weight decay (matrices only)."""
    context_weight: float = 0.3
    """Loss weight of the tokens that are not targets (instruction, observations, notes), the
    targets weighing 1. Predicting the observations too is what teaches a tiny model to copy from
    its context (a listed surname, a container name): with a loss on the actions alone, which
    are a tenth of the tokens, 1600 steps did not learn to copy a listed surname."""


@dataclass(frozen=True)
class AbilityCheck:
    """The build's check of its own actor: does it act on advice? On validation tasks of each
    family in ``envs``, the trajectory oracle's success after the recipe's trials must beat no
    reflection by ``min_oracle_gain``; while it does not, the actor trains on (``extra_steps`` a
    round, up to ``max_rounds``) before the retrospective base starts from it.

    Why: a tiny model learns to copy a name from its context (a listed surname, a container) in
    a sudden phase change whose step depends on the machine's floating-point kernels; one build
    of the same recipe copied at step 700, another had not by step 1200 (oracle 0.37 against no
    reflection 0.28 on ``lookup``, where 800 more steps gave 0.93). A fixed step count made the
    machine decide the ceiling Retroformer is measured against; a check on the ability does not.
    """

    envs: tuple[str, ...] = ("lookup",)
    """Families the actor must follow advice on (household and shop are not learnable yet)."""
    tasks: int = 40
    """Validation tasks per family and check."""
    min_oracle_gain: float = 0.5
    """Required success of the trajectory oracle minus no reflection, per family. Well above
    the 0.3 the zoo must show on test tasks: a build that only just clears 0.3 on 40 validation
    tasks (one did, 0.53 vs 0.23) can land below it on test tasks, and leaves Retroformer a
    ceiling that moves with the build."""
    extra_steps: int = 400
    """Further SFT steps per round that falls short."""
    max_rounds: int = 5
    """Rounds of further training at most; the build then reports the shortfall and goes on."""
    lr: float = 1.5e-3
    """Peak learning rate of a round (warm-up 10 steps, cosine decay to 10%)."""


@dataclass(frozen=True)
class Recipe:
    """How to build the zoo: data, tokenizer, both models and their training schedules."""

    name: str = "default"
    """Name of the recipe; the cache entry is ``<name>-<hash12>``."""
    envs: tuple[str, ...] = ENVS
    """Built-in environments whose train split provides the demonstrations and reflections."""
    tasks_per_env: int = 700
    """Train-split tasks per environment played by the scripted actor through the trial loop."""
    option_values: tuple[tuple[str, tuple[tuple[str, tuple[int, ...]], ...]], ...] = ()
    """Difficulty knobs the demonstrations are played at: per family, per option of its
    ``env.options``, the values one is drawn from (uniformly, once per task), e.g.
    ``(("shop", (("n_items", (5, 6)),)),)``. Families and options left out keep their defaults,
    so an actor trained on the defaults alone never saw a sixth item (and never clicked one)."""
    env_options: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    """Knobs fixed for every play of a family, in the data, the ability check and ``zoo eval``
    (which a user's ``--option`` overrides), e.g. ``(("alfworld", (("max_steps", 12),)),)``.
    ``option_values`` draws are applied on top of them."""
    max_trials: int = 3
    """Trials per task in the data runs (the evaluation's default, too)."""
    actor_regimes: tuple[tuple[str, float], ...] = (
        ("none", 0.10),
        ("vague", 0.15),
        ("trajectory_oracle", 0.30),
        ("ground_truth", 0.15),
        ("misleading", 0.10),
        ("mixed", 0.20),
    )
    """Reflections the actor's demonstrations carry, drawn once per task: one reflector kind for
    all its failed trials, or ``mixed`` (each reflection drawn from ``reflection_mix``, what the
    retrospective base will write). With mostly informative advice, and demonstrations that
    follow whatever the notes say, the actor learns to act on advice, good or bad."""
    reflection_mix: tuple[tuple[str, float], ...] = (
        ("trajectory_oracle", 1 / 3),
        ("vague", 1 / 3),
        ("misleading", 1 / 3),
    )
    """Kinds of the retrospective base's training targets: informative, useless and wrong, so
    that its samples at temperature 1 vary in quality and a policy gradient has something to
    select."""
    base_shares: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    """The share of the retrospective base's training examples kept, per family and kind of
    reflection (all of them where not named), e.g. ``(("shop", (("trajectory_oracle", 0.2),)),)``.
    Drawn once per example, seeded; the data and the actor are unchanged. Where a family's oracle
    reflection is easy to reproduce, a base trained on a third of them writes it greedily, and a
    policy gradient has nothing left to improve: keeping fewer makes its greedy reflection the
    vague one (the position of a general chat model as a base) while its samples still hold the
    oracle's."""
    action_slips: float = 0.0
    """Chance that a step of the demonstrations plays a slip instead of the scripted action: the
    action with one of its numbers changed (``go to drawer 4`` for ``drawer 2``), the mistake a
    small model makes. The slip stays in the trial as context, never as a target, and the scripted
    actor plays on from where it led (after "Nothing happens.", or at the wrong place). An actor
    trained on flawless play alone has never seen a trial recover: after its first mistake it
    repeats the ignored command to the step limit. Actions without a number never slip."""
    numbered_names: bool = False
    """Tokenize a word and the number after it (``drawer 2``, ``toiletpaper 3``) as one piece, so
    that BPE can give each numbered name a token of its own: the actor copies a name as one token
    instead of finding the one number that counts among dozens in its prompt."""
    vocab_size: int = 1024
    """BPE vocabulary (256 bytes, 3 special tokens, merges). The environments use a few hundred
    distinct words, each with and without a leading space, so nearly every word becomes one
    token."""
    model: ModelShape = field(default_factory=ModelShape)
    """Shape of both models (the retrospective base starts from the actor's weights)."""
    actor_sft: SFTSchedule = field(default_factory=SFTSchedule)
    """Training of the actor on demonstrations."""
    retro_sft: SFTSchedule = field(
        default_factory=lambda: SFTSchedule(steps=400, lr=1e-3, warmup_steps=20)
    )
    """Training of the retrospective base on reflections."""
    ability_check: AbilityCheck = field(default_factory=AbilityCheck)
    """The check of the actor's ability to follow advice, and training on until it holds."""
    actor_restarts: int = 0
    """Fresh starts of the actor (new initial weights, seeded ``seed + 1000 k``) after an
    attempt that its ability check's extra rounds leave short; the build keeps the first able
    attempt, else the one closest to able. A small model learns to copy a name from its notes in
    a sudden change whose step the initial weights and the machine's kernels decide (the
    default recipe on one machine: seeds 0 and 3 at 1,200 steps, seed 2 at 2,800, seed 1 not by
    3,200): training on rescues some builds, a new start the others."""
    retro_from_actor: bool = True
    """Start the retrospective base from the trained actor rather than from random weights: the
    actor already reads the environments' text and copies names from its context, the skill a
    reflection needs, so the reflection SFT converges in a fraction of the steps."""
    seed: int = 0
    """Seed of task regimes, reflection draws, model init and batch order."""

    def to_dict(self) -> dict:
        """The recipe as plain data; the fields of ``OPTIONAL_FIELDS`` only when they differ from
        their default, so a recipe that leaves them keeps the cache key it had before they
        existed."""
        data = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in OPTIONAL_FIELDS and data[f.name] == f.default:
                del data[f.name]
        return data

    def fixed_options(self, env: str) -> dict[str, int]:
        """The knobs ``env_options`` fixes for ``env`` (empty when it names none)."""
        return dict(dict(self.env_options).get(env, ()))

    def digest(self) -> str:
        """12 hex digits of SHA-256 over the recipe and ``ZOO_CODE_VERSION``: the cache key."""
        return _versioned_hash("recipe", self.to_dict())

    def data_digest(self) -> str:
        """12 hex digits over what decides the zoo's data (the environments, their tasks and
        knobs, the regimes and reflections, the seed), not the models: the data cache's key."""
        return _versioned_hash(
            "data", {k: v for k, v in self.to_dict().items() if k in DATA_FIELDS}
        )

    @property
    def key(self) -> str:
        return f"{self.name}-{self.digest()}"

    def validate(self) -> Recipe:
        for env in self.envs:
            if not has_scripted_actor(env):
                raise ValueError(
                    f"recipe env {env!r} has no scripted actor to learn from; the zoo learns "
                    "from environments that are ScriptedActorEnvs (the built-in families, "
                    "hotpotqa, alfworld)"
                )
        for label, weights in (
            ("actor_regimes", self.actor_regimes),
            ("reflection_mix", self.reflection_mix),
        ):
            if not weights or any(w < 0 for _, w in weights) or sum(w for _, w in weights) <= 0:
                raise ValueError(f"recipe {label} needs non-negative weights with a positive sum")
        for env in self.ability_check.envs:
            if env not in self.envs:
                raise ValueError(f"ability_check env {env!r} is not one of the recipe's envs")
        for env, fixed in self.env_options:
            if env not in self.envs:
                raise ValueError(f"env_options env {env!r} is not one of the recipe's envs")
            make_env(env, dict(fixed))
        for env, knobs in self.option_values:
            if env not in self.envs:
                raise ValueError(f"option_values env {env!r} is not one of the recipe's envs")
            for option, values in knobs:
                if not values:
                    raise ValueError(f"option_values {env}.{option} needs at least one value")
                for value in values:  # every value must make a valid environment
                    make_env(env, {**self.fixed_options(env), option: value})
        for env, kinds in self.base_shares:
            if env not in self.envs:
                raise ValueError(f"base_shares env {env!r} is not one of the recipe's envs")
            for kind, share in kinds:
                if kind not in REFLECTION_KINDS or not 0.0 <= share <= 1.0:
                    raise ValueError(
                        f"base_shares {env}.{kind}={share}: give a kind of "
                        f"{', '.join(REFLECTION_KINDS)} and a share in [0, 1]"
                    )
        if self.actor_restarts < 0:
            raise ValueError(f"recipe actor_restarts {self.actor_restarts}: give 0 or more")
        if not 0.0 <= self.action_slips < 1.0:
            raise ValueError(f"recipe action_slips {self.action_slips}: give a chance in [0, 1)")
        shape = self.model
        if shape.hidden_size % shape.num_heads or shape.hidden_size // shape.num_heads < 64:
            raise ValueError(f"model shape {shape}: head_dim must be an integer >= 64")
        return self


OPTIONAL_FIELDS = frozenset(
    {
        "option_values",
        "env_options",
        "action_slips",
        "numbered_names",
        "actor_restarts",
        "base_shares",
    }
)
"""Fields added after the first recipes were cached: at their default they are left out of the
cache key."""

DATA_FIELDS = frozenset(
    {
        "envs",
        "tasks_per_env",
        "option_values",
        "env_options",
        "action_slips",
        "max_trials",
        "actor_regimes",
        "reflection_mix",
        "seed",
    }
)
"""The recipe's fields that decide its data (see ``Recipe.data_digest``)."""

TINY = Recipe(
    name="tiny",
    tasks_per_env=40,
    vocab_size=400,
    model=ModelShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=128),
    actor_sft=SFTSchedule(steps=150, batch_size=8, lr=3e-3, warmup_steps=10),
    retro_sft=SFTSchedule(steps=80, batch_size=8, lr=3e-3, warmup_steps=10),
    ability_check=AbilityCheck(envs=()),  # tests' models: loadable, not able
)

FAMILIES = Recipe(
    name="families",
    tasks_per_env=2500,
    actor_sft=SFTSchedule(steps=6000),
    retro_sft=SFTSchedule(steps=2400, lr=1e-3, warmup_steps=20),
    base_shares=(("shop", (("trajectory_oracle", 0.2), ("misleading", 0.2))),),
    env_options=(("household", (("named_looks", True),)),),
    ability_check=AbilityCheck(envs=ENVS, extra_steps=4000),
)
"""An actor that follows advice on all three families. The default's actor (700 tasks per
family, 1200 to 2000 steps) learns to copy a name from its notes on ``lookup`` but never, on
``household`` and ``shop``, to match what it sees against the task (take the object it was asked
for, click the item of the asked colour): it memorised the train tasks' clicks (66% right on
them, 36% on unseen ones). With 2500 tasks per family the skills arrive one family at a time:
measured here on 20 to 30 validation tasks per family (no reflection / trajectory oracle), after
6000 steps lookup 0.25 / 1.00 and shop 0.20 / 0.85 but household 0.00 / 0.15; then, at half the
learning rate, after 2000 further steps household 0.07 / 0.77, after 4000 household 0.33 / 1.00
(it now takes the object it sees without being told where it is), lookup 0.23 / 1.00, shop
0.23 / 0.77. So the ability check trains on in rounds of 4000 steps until every family clears
its gain; the build measured here stopped at 18,000 steps, 31 minutes on one core.

The retrospective base trains 2400 steps (about five passes over its 7,366 reflections, six and a
half over the 5,847 the shop shares below keep; it had 800, under two). Policy gradient only reinforces reflections the base samples, and after 800
steps its samples at temperature 1 rarely helped (``benchmarks.reflection_room``, 100 test
tasks, 8 samples per failed first trial: on ``lookup`` a sample won the next trial on 29% of the
failed trials, against 53% after 2400 steps; on ``household`` 19% against 30%), while its greedy
reflections stayed well below the oracle's. One reflector trained across the families on each
base closed 0.14 against 0.75 of the gap on ``lookup`` (one training run each, same actor).

On ``shop`` the base trains on a fifth of its oracle and misleading reflections (``base_shares``).
Shop's oracle reflection ("Size M was too small. Choose from L, XL.") follows from the returned
orders by a rule a 2-layer model reproduces exactly: with a third of its targets of that kind, the
base's greedy reflection was the oracle's on every test task, and Retroformer had nothing to
improve. With a fifth, its greedy reflection is a vague one (a general chat model's usual
position as a base, the paper's) while about one sample in seven is still the oracle's: measured
on the families build's actor (100 test tasks, 8 samples), after a failed first trial the base's
greedy reflection wins 0.00 of next trials against the oracle's 0.36, and some sample wins on 26%
of them.

On ``household`` a look names its container (``named_looks``: "In sofa 1 you see a key."). The
oracle's winning household reflection says where the object was ("The key is in sofa 1."); with
"You see a key." the container is only in the action line above the observation, and the 2-layer
base copied it greedily on 4 to 6 of 37 such failed trials. Measured with two bases trained from
one actor, a tenth of household's examples held out of both: on held-out trials the base names the
right container greedily 0.45 of the time with named looks against 0.125 without (sampled: 0.16
against 0.05). On this recipe's build (2 threads): ``reflection_room`` household after a failed
first trial, some sample wins 0.50 (0.30 without), greedy 0.33 (0.16), oracle 0.79 (0.54).
The default recipe keeps the unnamed form: its actor (700 tasks per family, trained for
``lookup``) was not able with named looks in two starts of three."""

FAMILIES_RANGE = dataclasses.replace(
    FAMILIES,
    name="families_range",
    option_values=(
        ("lookup", (("n_candidates", (3, 4)), ("hops", (1, 2)))),
        ("household", (("n_containers", (6, 7, 8)),)),
        ("shop", (("n_items", (5, 6)), ("n_sizes", (4, 5)))),
    ),
    retro_sft=SFTSchedule(steps=800, lr=1e-3, warmup_steps=20),
    base_shares=(),
    env_options=(),
)
"""``families`` with each family's demonstrations played across its knobs, from the default to
one or two steps harder: the ``families`` actor follows a trajectory oracle at the defaults but
mostly not beyond them (on 50 test tasks, oracle over no reflection: +0.14 at 4 lookup
candidates, +0.12 at 8 household containers, +0.24 at 5 shop sizes, and a sixth shop item, never
seen, broke it). The ability check still runs at the defaults. Measured (50 test tasks): the
oracle's gain one step harder is now +0.40 at 8 containers, +0.44 at 5 sizes, +0.60 at 6 items
and +0.70 at 2 hops, but still none at 4 lookup candidates; the build used all 5 extra rounds
(26,000 steps) and warns that lookup and household stay under the check's 0.5 on validation.
Its retrospective base keeps the 800 steps, all the examples and the unnamed household looks its
figures were measured with (``families`` moved to 2400 steps, thins shop's and names household's
containers; not measured here)."""

ALFWORLD = Recipe(
    name="alfworld",
    envs=("alfworld",),
    tasks_per_env=1500,
    env_options=(("alfworld", (("max_steps", 12),)),),
    action_slips=0.1,
    vocab_size=1024,
    model=ModelShape(max_positions=1024),
    actor_sft=SFTSchedule(steps=5000),
    ability_check=AbilityCheck(envs=("alfworld",), tasks=30, extra_steps=2000, max_rounds=2),
)
"""An actor and a retrospective base for ALFWorld, trained on ALFWorld's train games only (the
134 ``valid_unseen`` games are the test split; the ability check plays train games the hash
puts in validation). Trials are limited to 12 steps, where the scripted actor's search without
advice wins 0.43 of train games and the trajectory oracle's advice 0.90 (``docs/benchmarks.md``):
at ALFWorld's usual 50 the search alone wins nearly all, and no reflection could matter. A trial
of 12 steps is about 600 tokens, hence 1024 positions. A tenth of the demonstration steps slip
(``action_slips``), so the actor sees trials recover from a command the game ignored. Needs
ALFWorld's data (``retro-ray data fetch alfworld``); build with ``--workers 2`` on 2 cores.

Not yet able, and past the 30 minutes the zoo aims at. Measured here (2 cores):

- 600 games, 3000 steps (before slips and before the scripted actor examined receptacles that
  share its spot): trajectory oracle 0.07, no reflection 0.03 on 30 validation games; the actor
  chose the scripted action at 78% of the steps (a 4-layer model at 1400 steps: the same 78%).
  In play it repeats a command the game ignored until the step limit, as its teacher did in
  rooms where two receptacles share a spot.
- 600 games with slips and ``numbered_names`` (vocabulary 1428), 2000 steps: oracle 0.07, none
  0.00; agreement 78%, the misses now of kind (a newspaper taken for a laptop) more than of
  number.
- This recipe, 1500 games (25 min with two workers; 3229 demonstrations, 1730 reflections) and
  5000 steps (46 min, part of them beside an evaluation): oracle 0.20, none 0.10. More data is
  the lever that moved it."""

DEFAULT = Recipe(actor_restarts=2)
"""The demo's models, a few minutes on 2 cores: an actor that follows advice on ``lookup``.
Where its check's extra rounds leave it short (two seeds in six on the machine measured), it
starts afresh, up to twice (both were able in their second start, 400 and 1,200 steps in)."""

RECIPES: dict[str, Recipe] = {
    "default": DEFAULT,
    "tiny": TINY,
    "families": FAMILIES,
    "families_range": FAMILIES_RANGE,
    "alfworld": ALFWORLD,
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown zoo recipe {name!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[name].validate()
