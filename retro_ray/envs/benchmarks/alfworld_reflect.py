"""Reflections written by code for ALFWorld: the trajectory oracle and the ground-truth one.

The trajectory oracle uses only what a failed trial showed: the task (its folder name spells out
the object and the target receptacle, as the task sentence does), the room listing of the first
observation, and what each action revealed. It says where the object was seen, which places held
none of it (merged with what earlier reflections said, because every trial replays the same game),
which places are still unsearched, what to do with the object next, and what went wrong with the
actions: commands the game ignored, a loop, the step limit. It is the ceiling for a reflector: a
learned one cannot know more than the trial showed.

The ground-truth reflection is the game's walkthrough: an upper bound, never a baseline.
"""

from __future__ import annotations

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
NOTHING = "Nothing happens."
STEP_LIMIT = "Step limit reached."

# What each task type asks for after the object is found: (verb, appliance kind) or None.
_TREATMENT = {
    "pick_clean_then_place_in_recep": ("clean", "sinkbasin"),
    "pick_heat_then_place_in_recep": ("heat", "microwave"),
    "pick_cool_then_place_in_recep": ("cool", "fridge"),
}


@dataclass(frozen=True)
class Goal:
    """The task as its folder name states it, e.g. ``pick_heat_then_place_in_recep-Cup-None-
    Cabinet-7``: ("pick_heat_then_place_in_recep", "cup", "cabinet"). Empty fields when the task
    id does not follow ALFWorld's layout."""

    task_type: str = ""
    obj: str = ""
    receptacle: str = ""

    @classmethod
    def from_task_id(cls, task_id: str) -> Goal:
        parts = task_id.split("/")[-2].split("-") if "/" in task_id else []
        if len(parts) < 4:
            return cls()
        return cls(parts[0], parts[1].lower(), parts[3].lower())


@dataclass
class Findings:
    """What one trial (and the earlier reflections) revealed."""

    room: list[str] = field(default_factory=list)  # every place the room listing names
    contents: dict[str, list[str]] = field(default_factory=dict)  # place -> objects seen there
    visited: list[str] = field(default_factory=list)  # places reached, in order
    picked: list[tuple[str, str]] = field(default_factory=list)  # (object, place)
    ignored: list[str] = field(default_factory=list)  # actions answered "Nothing happens."
    ran_out: bool = False


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
        observation = step.observation
        if observation.startswith(NOTHING):
            found.ignored.append(step.action)
        if arrive := _ARRIVE.match(observation):
            found.visited.append(arrive.group(1))
        if seen := _CONTENTS.search(observation):
            found.contents[seen.group(1) or seen.group(2)] = item_list(seen.group(3))
        if pick := _PICK.match(observation):
            found.picked.append((pick.group(1), pick.group(2)))
    acted = [s for s in trajectory.steps if not s.action.startswith("Think:")]
    last = trajectory.steps[-1].observation if trajectory.steps else ""
    found.ran_out = not trajectory.won and (last.endswith(STEP_LIMIT) or len(acted) >= max_steps)
    return found


def _is(name: str, kind: str) -> bool:
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
    hits = {place: [t for t in things if _is(t, kind)] for place, things in seen.items()}
    return {place: things for place, things in hits.items() if things}


def _plan(goal: Goal, room: Sequence[str], need: int, lamps: dict[str, list[str]]) -> str:
    """What to do with the object, in the games' own command forms."""
    what = f"two {goal.obj}s" if need == 2 else f"a {goal.obj}"
    steps = [f"take {what}"]
    if treatment := _TREATMENT.get(goal.task_type):
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
    instances = [p for p in room if _is(p, kind)]
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
