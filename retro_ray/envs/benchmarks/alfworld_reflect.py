"""Reflections written by code for ALFWorld: the trajectory oracle and the ground-truth one.

The trajectory oracle uses only what a failed trial showed: the task (its folder name spells out
the object and the target receptacle, as the task sentence does), the room listing of the first
observation, and what each action revealed. It says where the object was seen, which places held
none of it (merged with what earlier reflections said, because every trial replays the same game),
which places are still unsearched, what to do with the object next, and what went wrong with the
actions: commands the game ignored, a loop, the step limit. It is the ceiling for a reflector: a
learned one cannot know more than the trial showed.

The ground-truth reflection is the game's walkthrough: an upper bound, never a baseline.

The misleading reflection says the oracle's sentences with the facts turned around (negative
examples for the retrospective model). ``read_advice`` reads all three back for the scripted
actor, which trusts whatever they say; ``Goal.from_task_text`` and ``read_trajectory`` give it
the task and what its trial has shown, from the text an LLM actor sees.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from retro_ray.envs.base import Trajectory

_PLACE = r"[a-z]+ \d+"
_ARRIVE = re.compile(rf"^You (?:arrive at|open the) ({_PLACE})\.")
_CONTENTS = re.compile(
    rf"(?:On the ({_PLACE})|The ({_PLACE}) is open\. In it), you see (.+?)\.(?:\s|$)"
)
_PICK = re.compile(rf"^You pick up the ({_PLACE}) from the ({_PLACE})\.")
_ROOM = re.compile(r"Looking quickly around you, you see (.+?)\.\s*$", re.MULTILINE)
_SAW = re.compile(rf"I saw (.+?) at ({_PLACE})\.")
_CLOSED = re.compile(rf"The ({_PLACE}) is closed\.")
_MOVE = re.compile(rf"^You move the ({_PLACE}) to the ({_PLACE})\.")
_TREAT = re.compile(rf"^You (?:heat|cool|clean) the ({_PLACE}) using the ({_PLACE})\.")
_TURN_ON = re.compile(rf"^You turn on the ({_PLACE})\.")
_TASK = re.compile(r"Your task is to: (.+?)\.?\s*$", re.MULTILINE)
NOTHING = "Nothing happens."
STEP_LIMIT = "Step limit reached."

# What each task type asks for after the object is found: (verb, appliance kind) or None.
TREATMENT = {
    "pick_clean_then_place_in_recep": ("clean", "sinkbasin"),
    "pick_heat_then_place_in_recep": ("heat", "microwave"),
    "pick_cool_then_place_in_recep": ("cool", "fridge"),
}

# The task sentence's phrasings, each with the object and the destination (or lamp) as groups.
_TASK_FORMS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (task_type, re.compile(pattern))
    for task_type, pattern in (
        ("pick_two_obj_and_place", r"put two (\w+) in (\w+)"),
        ("pick_two_obj_and_place", r"find two (\w+) and put them in (\w+)"),
        ("look_at_obj_in_light", r"look at (\w+) under the (\w+)"),
        ("look_at_obj_in_light", r"examine the (\w+) with the (\w+)"),
        ("pick_clean_then_place_in_recep", r"clean some (\w+) and put it in (\w+)"),
        ("pick_clean_then_place_in_recep", r"put a clean (\w+) in (\w+)"),
        ("pick_heat_then_place_in_recep", r"heat some (\w+) and put it in (\w+)"),
        ("pick_heat_then_place_in_recep", r"put a hot (\w+) in (\w+)"),
        ("pick_cool_then_place_in_recep", r"cool some (\w+) and put it in (\w+)"),
        ("pick_cool_then_place_in_recep", r"put a cool (\w+) in (\w+)"),
        ("pick_and_place_simple", r"put (?:a|an|some) (\w+) (?:in|on) (\w+)"),
    )
)


@dataclass(frozen=True)
class Goal:
    """The task as its folder name states it, e.g. ``pick_heat_then_place_in_recep-Cup-None-
    Cabinet-7``: ("pick_heat_then_place_in_recep", "cup", "cabinet"), or as the task sentence
    says it (the same fields: the scripted actor reads the sentence, as an LLM actor does, since
    the task id is not in its prompt). Empty fields when neither follows ALFWorld's layout."""

    task_type: str = ""
    obj: str = ""
    receptacle: str = ""

    @classmethod
    def from_task_id(cls, task_id: str) -> Goal:
        parts = task_id.split("/")[-2].split("-") if "/" in task_id else []
        if len(parts) < 4:
            return cls()
        return cls(parts[0], parts[1].lower(), parts[3].lower())

    @classmethod
    def from_task_text(cls, first_observation: str) -> Goal:
        """``Your task is to: heat some cup and put it in cabinet.`` -> (heat type, cup, cabinet);
        for a look-at task the receptacle is the lamp (``desklamp``)."""
        task = _TASK.search(first_observation)
        sentence = task.group(1).strip().lower() if task else ""
        for task_type, form in _TASK_FORMS:
            if match := form.fullmatch(sentence):
                return cls(task_type, match.group(1), match.group(2))
        return cls()

    @property
    def count(self) -> int:
        """How many objects the task moves."""
        return 2 if self.task_type == "pick_two_obj_and_place" else 1


@dataclass
class Findings:
    """What one trial (and the earlier reflections) revealed. ``contents`` keeps each place's
    latest description; the fields after ``ran_out`` follow the play itself (what is held,
    moved, treated), which the scripted actor needs and the oracle does not."""

    room: list[str] = field(default_factory=list)  # every place the room listing names
    contents: dict[str, list[str]] = field(default_factory=dict)  # place -> objects seen there
    visited: list[str] = field(default_factory=list)  # places reached, in order
    picked: list[tuple[str, str]] = field(default_factory=list)  # (object, place)
    ignored: list[str] = field(default_factory=list)  # actions answered "Nothing happens."
    ran_out: bool = False
    at: str = ""  # the place arrived at last
    closed: set[str] = field(default_factory=set)  # places last seen closed
    holding: str = ""  # the object in hand
    moved: list[tuple[str, str]] = field(default_factory=list)  # (object, place) put down
    treated: set[str] = field(default_factory=set)  # objects heated, cooled or cleaned
    lit: bool = False  # a lamp was turned on


def item_list(text: str) -> list[str]:
    """``a mug 1, a pen 2, and a cd 1`` -> ["mug 1", "pen 2", "cd 1"]; ``nothing`` -> []."""
    items = re.split(r",\s*(?:and\s+)?|\s+and\s+", text.strip())
    names = [re.sub(r"^(?:an?|the)\s+", "", item.strip()) for item in items]
    return [name for name in names if name and name != "nothing"]


def read_trajectory(trajectory: Trajectory, max_steps: int) -> Findings:
    found = Findings()
    if room := _ROOM.search(trajectory.first_observation):
        found.room = item_list(room.group(1))
    for step in trajectory.steps:
        _read_observation(found, step.action, step.observation)
    acted = [s for s in trajectory.steps if not s.action.startswith("Think:")]
    last = trajectory.steps[-1].observation if trajectory.steps else ""
    found.ran_out = not trajectory.won and (last.endswith(STEP_LIMIT) or len(acted) >= max_steps)
    return found


def _read_observation(found: Findings, action: str, observation: str) -> None:
    """Fold one game answer into ``found``."""
    if observation.startswith(NOTHING):
        found.ignored.append(action)
        walk = action.removeprefix("go to ")
        if walk != action and walk in found.room:
            # The game ignores a walk to the spot the actor stands at, and some receptacles
            # share one (cabinets 22 and 23 of a kitchen): the actor is at that place too.
            found.at = walk
    if arrive := _ARRIVE.match(observation):
        found.visited.append(arrive.group(1))
        if observation.startswith("You arrive at"):
            found.at = arrive.group(1)
    if seen := _CONTENTS.search(observation):
        place = seen.group(1) or seen.group(2)
        found.contents[place] = item_list(seen.group(3))
        found.closed.discard(place)
    if closed := _CLOSED.search(observation):
        found.closed.add(closed.group(1))
    if pick := _PICK.match(observation):
        found.picked.append((pick.group(1), pick.group(2)))
        found.holding = pick.group(1)
    if move := _MOVE.match(observation):
        found.moved.append((move.group(1), move.group(2)))
        found.holding = ""
    if treat := _TREAT.match(observation):
        found.treated.add(treat.group(1))
    if _TURN_ON.match(observation):
        found.lit = True


def of_kind(name: str, kind: str) -> bool:
    """Whether ``name`` is an instance of ``kind``: ``mug 2`` of ``mug``, never of ``mu``."""
    return bool(kind) and re.fullmatch(rf"{re.escape(kind)} \d+", name) is not None


def _join(names: Sequence[str]) -> str:
    return ", ".join(names)


def oracle_reflection(
    trajectory: Trajectory, memory: Sequence[str], max_steps: int, put_alias: bool = True
) -> str:
    """The trajectory oracle's reflection (see the module docstring)."""
    goal = Goal.from_task_id(trajectory.task.task_id)
    found = read_trajectory(trajectory, max_steps)
    # Everything seen where, as earlier reflections say and then as this trial showed.
    seen: dict[str, list[str]] = {}
    for text in memory:
        for things, place in _SAW.findall(text):
            seen[place] = things.split(", ")
    seen.update(found.contents)
    for obj, place in found.picked:
        seen[place] = list(dict.fromkeys([*seen.get(place, []), obj]))
    sightings = _where(seen, goal.obj)
    # The lamp of a look-at task stands on some receptacle; it is not in the room listing.
    lamps = _where(seen, goal.receptacle) if goal.task_type == "look_at_obj_in_light" else {}
    empty: set[str] = set()
    if goal.obj:
        for text in memory:
            for listed in re.findall(rf"No {re.escape(goal.obj)} at: (.+?)\.", text):
                empty.update(listed.split(", "))
        empty.update(found.contents)
    empty -= sightings.keys()

    sentences = [f"I saw {_join(t)} at {place}." for place, t in {**sightings, **lamps}.items()]
    order = found.room or sorted(empty)
    if goal.obj and empty:
        sentences.append(f"No {goal.obj} at: {_join([p for p in order if p in empty])}.")
    need = 2 if goal.task_type == "pick_two_obj_and_place" else 1
    if goal.obj and sum(len(t) for t in sightings.values()) < need:
        unsearched = [p for p in found.room if p not in empty and p not in sightings]
        if unsearched:
            sentences.append(f"Not searched yet: {_join(unsearched)}.")
    if goal.obj:
        sentences.append(_plan(goal, found.room, need, lamps))
    sentences += _action_notes(trajectory, found, put_alias)
    if not sentences:
        return "I did not finish the task. I should search each place once and use 'move X to Y'."
    return " ".join(sentences)


def _where(seen: dict[str, list[str]], kind: str) -> dict[str, list[str]]:
    """The places where instances of ``kind`` were seen, with those instances."""
    hits = {place: [t for t in things if of_kind(t, kind)] for place, things in seen.items()}
    return {place: things for place, things in hits.items() if things}


def _plan(goal: Goal, room: Sequence[str], need: int, lamps: dict[str, list[str]]) -> str:
    """What to do with the object, in the games' own command forms."""
    what = f"two {goal.obj}s" if need == 2 else f"a {goal.obj}"
    steps = [f"take {what}"]
    if treatment := TREATMENT.get(goal.task_type):
        verb, kind = treatment
        steps.append(f"{verb} it with {_instance(kind, room)}")
    if goal.task_type == "look_at_obj_in_light":
        if lamps:
            place, (lamp, *_) = next(iter(lamps.items()))
            steps.append(f"go to {place} and use {lamp}")
        else:
            steps.append(f"find the {goal.receptacle} and use it")
    elif need == 2:
        steps.append(f"move them to {_instance(goal.receptacle, room)}, one at a time")
    else:
        steps.append(f"move it to {_instance(goal.receptacle, room)}")
    return "Plan: " + ", then ".join(steps) + "."


def _instance(kind: str, room: Sequence[str]) -> str:
    """``sinkbasin 1`` when the room has exactly one; ``a cabinet`` when any of several will do."""
    instances = [p for p in room if of_kind(p, kind)]
    return instances[0] if len(instances) == 1 else f"a {kind}"


def _action_notes(trajectory: Trajectory, found: Findings, put_alias: bool) -> list[str]:
    notes: list[str] = []
    if found.ignored:
        examples = _join(f"'{a}'" for a in list(dict.fromkeys(found.ignored))[:3])
        notes.append(f"{len(found.ignored)} of my actions did nothing ({examples}).")
        if not put_alias and any(a.lower().startswith("put ") for a in found.ignored):
            notes.append("The game does not know 'put X in/on Y'; it says 'move X to Y'.")
    actions = Counter(s.action for s in trajectory.steps if not s.action.startswith("Think:"))
    if actions:
        action, count = actions.most_common(1)[0]
        if count >= 3:
            notes.append(f"I repeated '{action}' {count} times.")
    if found.ran_out:
        notes.append("I ran out of steps: skip places already searched and do not loop.")
    return notes


def ground_truth_text(walkthrough: Sequence[str]) -> str:
    """The walkthrough as advice: where the object is, and the winning command sequence."""
    if not walkthrough:
        return "No solution is known for this game."
    text = ""
    if take := next((a for a in walkthrough if a.startswith("take ")), None):
        obj, _, place = take.removeprefix("take ").partition(" from ")
        text = f"The {obj} is at {place}. "
    return text + "A winning plan: " + "; ".join(walkthrough) + "."


# ---- reading advice back: what the scripted actor takes from reflections -------------------

_TRUTH_AT = re.compile(rf"The ({_PLACE}) is at ({_PLACE})\.")
_NONE_AT = re.compile(r"No ([a-z]+) at: (.+?)\.")
_UNSEARCHED = re.compile(r"Not searched yet: (.+?)\.")
_WINNING = re.compile(r"A winning plan: (.+?)\.(?:\s|$)")
_USE_AT = re.compile(rf"go to ({_PLACE}) and use ({_PLACE})")


@dataclass(frozen=True)
class Advice:
    """What reflections say about one game, in the forms this module writes them. Nothing here
    is checked: misleading advice reads exactly like good advice, and the actor follows both."""

    object_at: tuple[str, ...] = ()  # places said to hold the object, in the order said
    lamps: tuple[tuple[str, str], ...] = ()  # (lamp, place) pairs said
    ruled_out: frozenset[str] = frozenset()  # places said to hold none of the object
    unsearched: tuple[str, ...] = ()  # places said to be still unsearched
    plan: tuple[str, ...] = ()  # a winning command sequence, when one is given


def read_advice(reflections: Sequence[str], goal: Goal) -> Advice:
    """Every hint of every reflection, oldest first; for the lists of unsearched places and the
    winning plan, the newest reflection that gives one wins (a later trial knows more)."""
    object_at: list[str] = []
    lamps: list[tuple[str, str]] = []
    ruled_out: set[str] = set()
    unsearched: tuple[str, ...] = ()
    plan: tuple[str, ...] = ()
    lamp_kind = goal.receptacle if goal.task_type == "look_at_obj_in_light" else ""
    for text in reflections:
        for things, place in _SAW.findall(text):
            names = things.split(", ")
            object_at += [place] if any(of_kind(n, goal.obj) for n in names) else []
            lamps += [(n, place) for n in names if of_kind(n, lamp_kind)]
        object_at += [place for name, place in _TRUTH_AT.findall(text) if of_kind(name, goal.obj)]
        lamps += [(lamp, place) for place, lamp in _USE_AT.findall(text)]
        for kind, places in _NONE_AT.findall(text):
            ruled_out.update(places.split(", ") if kind == goal.obj else [])
        if listed := _UNSEARCHED.findall(text):
            unsearched = tuple(listed[-1].split(", "))
        if winning := _WINNING.search(text):
            plan = tuple(winning.group(1).split("; "))
    return Advice(
        tuple(dict.fromkeys(object_at)),
        tuple(dict.fromkeys(lamps)),
        frozenset(ruled_out),
        unsearched,
        plan,
    )


# ---- misleading advice: confident and wrong, for training the retrospective model ----------


def misleading_text(trajectory: Trajectory, rng: random.Random, max_steps: int) -> str:
    """The oracle's sentences with the facts turned around, from the trajectory alone: the object
    "seen" at a place the trial found without it, the places it was seen (and some unsearched
    ones) "ruled out", the searched places called unsearched, and for a look-at task the lamp
    put where it was not seen. An actor that trusts it re-searches and skips the right places."""
    goal = Goal.from_task_text(trajectory.first_observation)
    if not goal.obj:
        goal = Goal.from_task_id(trajectory.task.task_id)
    found = read_trajectory(trajectory, max_steps)
    room = found.room or list(found.contents)
    if not goal.obj or not room:
        return "I did not finish the task. I should search each place once, then stop."
    sighted = _where(found.contents, goal.obj)
    searched = [p for p in room if p in found.contents and p not in sighted]
    unsearched = [p for p in room if p not in found.contents]
    decoy = rng.choice(searched or [p for p in room if p not in sighted] or room)
    instance = next((t[0] for t in sighted.values()), f"{goal.obj} 1")
    sentences = [f"I saw {instance} at {decoy}."]
    hidden = set(sighted) | set(rng.sample(unsearched, (len(unsearched) + 1) // 2))
    if hidden:
        sentences.append(f"No {goal.obj} at: {_join([p for p in room if p in hidden])}.")
    if back := [p for p in searched if p != decoy]:
        sentences.append(f"Not searched yet: {_join(back)}.")
    lamps: dict[str, list[str]] = {}
    if goal.task_type == "look_at_obj_in_light":
        seen_lamps = _where(found.contents, goal.receptacle)
        elsewhere = [p for p in room if p not in seen_lamps] or room
        lamp = next((t[0] for t in seen_lamps.values()), f"{goal.receptacle} 1")
        lamps[rng.choice(elsewhere)] = [lamp]
    sentences.append(_plan(goal, room, goal.count, lamps))
    return " ".join(sentences)
