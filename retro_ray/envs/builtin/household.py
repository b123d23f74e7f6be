"""``household``: find an object in a room and put it somewhere (ALFWorld in miniature).

"Task: put the key in the box." The room lists its containers; the key is in one of them (hidden).
``look drawer 1`` shows what a container holds, ``take key`` picks the object up from the container
looked at last, ``put key box`` delivers it and ends the trial. The step limit leaves time to search
only a few containers, so a failed trial tells which containers were empty, and a reflection that
says so sends the next trial to the others.

Departure from ALFWorld: no navigation (``go to``) or open/close actions, and a success is 0/1
with no partial credit, as in ALFWorld.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from retro_ray.envs.base import Task, Trajectory
from retro_ray.envs.builtin.common import BuiltinEnv, Outcome, sentences, stable_rng
from retro_ray.envs.registry import EnvSpec, register

CONTAINER_KINDS = ("drawer", "shelf", "cabinet", "safe", "desk", "bin", "fridge", "sofa")
OBJECTS = ("key", "cup", "book", "pen", "apple", "phone", "watch", "coin", "card", "ball")
DESTINATIONS = ("box", "bag", "tray", "basket")
CONTAINER = re.compile(r"\b((?:" + "|".join(CONTAINER_KINDS) + r") \d)\b")
_LOOK = re.compile(r"^look (?:at |in |into )?(?:the )?(.+?)\.?$", re.IGNORECASE)
_TAKE = re.compile(r"^take (?:the |a )?(\w+)(?: from .+)?\.?$", re.IGNORECASE)
_PUT = re.compile(r"^put (?:the |a )?(\w+) (?:in |into |on )?(?:the )?(\w+)\.?$", re.IGNORECASE)
_TASK = re.compile(r"Task: put the (\w+) in the (\w+)\.")
SEE = re.compile(r"^(?:In (.+?) you|You) see (?:a (\w+)|nothing)\.")
"""A look's observation in either form (``HouseholdOptions.named_looks``): group 2 is the object
the container holds (none when it holds nothing)."""


@dataclass(frozen=True)
class HouseholdOptions:
    n_containers: int = 6
    """Containers in the room; the object is in one of them."""
    distractor_rate: float = 0.5
    """Chance that a container without the object holds another object."""
    max_steps: int = 4
    """Step limit of one trial. Finding and delivering takes 2 steps after the finding look, so
    the default leaves time to look into 2 containers per trial."""
    named_looks: bool = False
    """A look's observation names the container ("In sofa 1 you see a key.", as ALFWorld names a
    receptacle) rather than only what it holds ("You see a key."). The trial is the same; a
    reflection that says where the object was is then a copy from one line, not from two."""

    def validate(self) -> None:
        most = len(CONTAINER_KINDS) * 3
        if not 2 <= self.n_containers <= most:
            raise ValueError(f"n_containers must be in 2..{most}, got {self.n_containers}")
        if not 0.0 <= self.distractor_rate <= 1.0:
            raise ValueError(f"distractor_rate must be in [0, 1], got {self.distractor_rate}")
        if self.max_steps < 3:
            raise ValueError(f"max_steps must be >= 3 (look, take, put), got {self.max_steps}")


@dataclass(frozen=True)
class HouseholdInstance:
    containers: tuple[str, ...]  # in the order the room lists them
    contents: dict[str, str | None]  # container -> the object in it, if any
    target: str  # the object to deliver
    destination: str
    location: str  # the container holding the target (hidden)


@lru_cache(maxsize=4096)
def generate(task_id: str, n_containers: int, distractor_rate: float) -> HouseholdInstance:
    rng = stable_rng("household", task_id)
    pool = [f"{kind} {i}" for kind in CONTAINER_KINDS for i in (1, 2, 3)]
    containers = tuple(rng.sample(pool, n_containers))
    target, *others = rng.sample(OBJECTS, 4)
    location = rng.choice(containers)
    contents: dict[str, str | None] = {}
    for container in containers:
        distractor = rng.choice(others) if rng.random() < distractor_rate else None
        contents[container] = target if container == location else distractor
    return HouseholdInstance(containers, contents, target, rng.choice(DESTINATIONS), location)


@dataclass(frozen=True)
class Advice:
    empty: frozenset[str]  # containers a reflection says do not hold the object
    suggested: tuple[str, ...]  # containers a reflection says to look in next
    location: str | None  # the container a reflection says holds the object


def read_advice(reflections: Sequence[str]) -> Advice:
    empty: set[str] = set()
    suggested: tuple[str, ...] = ()
    location = None
    for sentence in sentences(reflections):
        found = CONTAINER.findall(sentence)
        if " not in " in sentence:
            empty.update(found)
        elif sentence.startswith("Look in"):
            suggested = tuple(found)
        elif (" is in " in sentence or " was in " in sentence) and found:
            location = found[0]
    return Advice(frozenset(empty), suggested, location)


class HouseholdEnv(BuiltinEnv):
    name = "household"
    action_help = "Use: look <container>, take <object>, put <object> <place>."
    Options = HouseholdOptions

    def __init__(self, options: HouseholdOptions | None = None) -> None:
        self.options = options or HouseholdOptions()
        super().__init__(self.options.max_steps)
        self.instance: HouseholdInstance | None = None
        self.at: str | None = None  # the container looked at last
        self.holding: str | None = None

    def _instance(self, task: Task) -> HouseholdInstance:
        opts = self.options
        return generate(task.task_id, opts.n_containers, opts.distractor_rate)

    def _begin(self, task: Task) -> str:
        self.instance = self._instance(task)
        self.at = self.holding = None
        room = ", ".join(self.instance.containers)
        return f"You see {room}. Task: put the {self.instance.target} in the {self.instance.destination}."

    def _act(self, action: str) -> Outcome | None:
        assert self.instance is not None
        if match := _LOOK.match(action):
            container = match.group(1).strip().lower()
            if container not in self.instance.contents:
                return Outcome(f"There is no {container}.", 0.0)
            self.at = container
            held = f"a {thing}" if (thing := self.instance.contents[container]) else "nothing"
            seen = f"In {container} you see" if self.options.named_looks else "You see"
            return Outcome(f"{seen} {held}.", 0.0)
        if match := _TAKE.match(action):
            thing = match.group(1).lower()
            if self.holding:
                return Outcome(f"You already hold the {self.holding}.", 0.0)
            if self.at is None or self.instance.contents[self.at] != thing:
                return Outcome(f"There is no {thing} here.", 0.0)
            self.holding = thing
            return Outcome(f"You take the {thing}.", 0.0)
        if match := _PUT.match(action):
            thing, place = match.group(1).lower(), match.group(2).lower()
            if self.holding != thing:
                return Outcome(f"You do not hold a {thing}.", 0.0)
            if place != self.instance.destination:
                return Outcome(f"There is no {place} to put it in.", 0.0)
            won = thing == self.instance.target
            note = "Done." if won else "That is the wrong object."
            return Outcome(f"You put the {thing} in the {place}. {note}", float(won), won, True)
        return None

    # ---- reference policies -------------------------------------------------------------------

    def expert_action(self) -> str:
        assert self.instance is not None
        target, destination = self.instance.target, self.instance.destination
        if self.holding == target:
            return f"put {target} {destination}"
        if self.at == self.instance.location:
            return f"take {target}"
        return f"look {self.instance.location}"

    def random_action(self, rng: random.Random) -> str:
        assert self.instance is not None
        seen = [m.group(2) for o in self.observations if (m := SEE.match(o)) and m.group(2)]
        things = sorted({self.instance.target, *seen})
        form = rng.choice(("look", "take", "put"))
        if form == "look":
            return f"look {rng.choice(self.instance.containers)}"
        if form == "take":
            return f"take {rng.choice(things)}"
        return f"put {rng.choice(things)} {self.instance.destination}"

    def scripted_action(self, reflections: Sequence[str], rng: random.Random) -> str:
        """Deliver the object once seen; otherwise look into a container not yet looked into this
        trial, preferring where a reflection points and skipping what it rules out."""
        match = _TASK.search(self.first_observation)
        assert match is not None
        target, destination = match.groups()
        if any(o.startswith(f"You take the {target}") for o in self.observations):
            return f"put {target} {destination}"
        looked: list[str] = []
        for action, observation in self.log:
            if (look := _LOOK.match(action)) and (seen := SEE.match(observation)):
                looked.append(look.group(1).strip().lower())
                if seen.group(2) == target:
                    return f"take {target}" if looked[-1] == self._last_looked() else action
        advice = read_advice(reflections)
        room = CONTAINER.findall(self.first_observation.split("Task:")[0])
        if advice.location in room and advice.location not in looked:
            return f"look {advice.location}"
        unseen = [c for c in room if c not in looked]
        open_ = [c for c in unseen if c not in advice.empty] or unseen or room
        preferred = [c for c in open_ if c in advice.suggested]
        return f"look {rng.choice(preferred or open_)}"

    def _last_looked(self) -> str | None:
        for action, observation in reversed(self.log):
            if (look := _LOOK.match(action)) and SEE.match(observation):
                return look.group(1).strip().lower()
        return None

    # ---- reflectors ---------------------------------------------------------------------------

    def trajectory_oracle(self, trajectory: Trajectory, memory: Sequence[str]) -> str:
        """Lists the containers the trials found without the object and those still unsearched;
        names the object's container if the trial saw it there."""
        match = _TASK.search(trajectory.first_observation)
        assert match is not None
        target, destination = match.groups()
        room = CONTAINER.findall(trajectory.first_observation.split("Task:")[0])
        prior = read_advice(memory)
        empty = set(prior.empty)
        for step in trajectory.steps:
            look = _LOOK.match(step.action)
            if look and (seen := SEE.match(step.observation)):
                container = look.group(1).strip().lower()
                if seen.group(2) == target:
                    return f"The {target} is in {container}. Take it, put it in the {destination}."
                empty.add(container)
        if prior.location:
            return f"The {target} is in {prior.location}. Take it, put it in the {destination}."
        if not empty:
            return f"I did not find the {target}. Look in each container once."
        searched = ", ".join(c for c in room if c in empty)
        remaining = ", ".join(c for c in room if c not in empty)
        text = f"The {target} was not in {searched}."
        return f"{text} Look in {remaining} next." if remaining else text

    def ground_truth_reflection(self, task: Task) -> str:
        instance = self._instance(task)
        return f"The {instance.target} is in {instance.location}."

    def misleading_reflection(self, trajectory: Trajectory, rng: random.Random) -> str:
        """Confident and wrong, from the trajectory alone: says the object is not in containers
        the trial never looked into and sends the next trial back to those it found empty (or
        places the object in one of them). Training data for the retrospective base."""
        match = _TASK.search(trajectory.first_observation)
        assert match is not None
        target = match.group(1)
        room = CONTAINER.findall(trajectory.first_observation.split("Task:")[0])
        looked = []
        for step in trajectory.steps:
            look = _LOOK.match(step.action)
            if look and SEE.match(step.observation):
                looked.append(look.group(1).strip().lower())
        looked = [c for c in room if c in looked] or rng.sample(room, 2)
        unseen = [c for c in room if c not in looked]
        if rng.random() < 0.5 and unseen:
            picked = set(rng.sample(unseen, min(2, len(unseen))))
            ruled_out = ", ".join(c for c in unseen if c in picked)
            return f"The {target} was not in {ruled_out}. Look in {', '.join(looked)} next."
        return f"The {target} is in {rng.choice(looked)}."


register(
    EnvSpec(
        name=HouseholdEnv.name,
        factory=HouseholdEnv,
        options_cls=HouseholdOptions,
        description="find an object in a room and put it away (ALFWorld in miniature)",
    )
)
