"""The ``Discrete`` action space of each built-in family: fixed slots over text actions (pure).

An RL policy picks an integer; the wrapper turns it into the text action the environment reads.
Each family has a fixed **layout**: named groups of slots, each group a kind of action, filled
only from what the episode has *shown* (the task text and the observations so far; never the
hidden instance), in order of first appearance. A slot that is empty now is masked out. So slot
``i`` means the same kind of action on every task (the policy can learn "the newest name"), and
an action's meaning never depends on hidden information.

==============  ===============================================================================
family          slots (group: capacity)
==============  ===============================================================================
``lookup``      ``Search[<first name of the question>]`` : 1; ``Search[<full name>]`` for each
                full name the observations showed : 10; ``Finish[<city>]`` for each city the
                observations showed : 5
``household``   ``look <container>`` for each container the room lists : 12;
                ``take <object>`` for the task's object, then each object seen : 4;
                ``put <object> <destination>`` for the same objects : 4
``shop``        ``search[<type>]``, ``search[<color>]`` of the instruction : 2;
                ``click[item k]`` for each item a search listed, slot by k : 8;
                ``choose[<size>]`` for each size an opened item offered, slot by size XS..XXL : 6;
                ``buy`` : 1
==============  ===============================================================================

Actions outside these slots (``Search[Bob]`` for a name never shown, free text) stay reachable
through the text interface (``retro_ray.envs.gym_env.GymTextEnv``) for LLM actors; every slot's
text is an action the environment itself parses. Capacities cover the families' options up to
``lookup`` ``n_candidates`` * (``hops`` + 1) <= 10 names, ``household`` ``n_containers`` <= 12
and ``shop`` ``n_items`` <= 8; larger settings are refused by :func:`check_options`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from retro_ray.envs.builtin.common import CITIES
from retro_ray.envs.builtin.household import CONTAINER, OBJECTS, SEE
from retro_ray.envs.builtin.lookup import FULL_NAME, asked_first_name
from retro_ray.envs.builtin.shop import SIZES

Log = Sequence[tuple[str, str]]
"""The episode so far: (action, observation) pairs."""


@dataclass(frozen=True)
class Layout:
    """Named groups of slots, in slot order: ``((group, capacity), ...)``."""

    groups: tuple[tuple[str, int], ...]

    @property
    def size(self) -> int:
        return sum(capacity for _, capacity in self.groups)

    def place(self, filled: Mapping[str, Sequence[str | None]]) -> list[str | None]:
        """The slot list: each group's actions in its slots (None: empty), cut to capacity."""
        slots: list[str | None] = []
        for group, capacity in self.groups:
            actions = list(filled.get(group, ()))[:capacity]
            slots += actions + [None] * (capacity - len(actions))
        return slots


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


_CITY = re.compile(r"\b(" + "|".join(CITIES) + r")\b")
_HOUSEHOLD_TASK = re.compile(r"Task: put the (\w+) in the (\w+)\.")
_SHOP_TASK = re.compile(r"buy an? (\w+) (\w+)\.")
_LISTED_ITEM = re.compile(r"item (\d+) \w+ \w+")
_OFFERED = re.compile(r"Sizes: ([A-Z, ]+)\.")

LOOKUP = Layout((("search_first", 1), ("search_name", 10), ("finish", 5)))
HOUSEHOLD = Layout((("look", 12), ("take", 4), ("put", 4)))
SHOP = Layout((("search", 2), ("click", 8), ("choose", len(SIZES)), ("buy", 1)))


def lookup_slots(first_observation: str, log: Log) -> list[str | None]:
    seen = " ".join(observation for _, observation in log)
    first = asked_first_name(first_observation)
    names = _unique(FULL_NAME.findall(seen))
    cities = _unique(_CITY.findall(seen))
    return LOOKUP.place(
        {
            "search_first": [f"Search[{first}]"],
            "search_name": [f"Search[{n}]" for n in names],
            "finish": [f"Finish[{c}]" for c in cities],
        }
    )


def household_slots(first_observation: str, log: Log) -> list[str | None]:
    task = _HOUSEHOLD_TASK.search(first_observation)
    if task is None:
        raise ValueError(f"household: no task line in {first_observation!r}")
    target, destination = task.groups()
    room = first_observation[: task.start()]
    containers = _unique(CONTAINER.findall(room))
    seen = [m.group(2) for _, o in log if (m := SEE.match(o)) and m.group(2) in OBJECTS]
    objects = _unique([target, *seen])
    return HOUSEHOLD.place(
        {
            "look": [f"look {c}" for c in containers],
            "take": [f"take {o}" for o in objects],
            "put": [f"put {o} {destination}" for o in objects],
        }
    )


def shop_slots(first_observation: str, log: Log) -> list[str | None]:
    task = _SHOP_TASK.search(first_observation)
    if task is None:
        raise ValueError(f"shop: no instruction in {first_observation!r}")
    color, kind = task.groups()
    listed = {int(k) for _, o in log if o.startswith("Results:") for k in _LISTED_ITEM.findall(o)}
    offered = {
        s.strip() for _, o in log if (m := _OFFERED.search(o)) for s in m.group(1).split(",")
    }
    capacity = dict(SHOP.groups)["click"]
    return SHOP.place(
        {
            "search": [f"search[{kind}]", f"search[{color}]"],
            "click": [f"click[item {k}]" if k in listed else None for k in range(1, capacity + 1)],
            "choose": [f"choose[{s}]" if s in offered else None for s in SIZES],
            "buy": ["buy"],
        }
    )


@dataclass(frozen=True)
class Family:
    layout: Layout
    slots: Callable[[str, Log], list[str | None]]
    limits: Callable[[Any], str | None]
    """Why an options object does not fit the layout (None: it fits)."""


def _lookup_limits(o: Any) -> str | None:
    names = o.n_candidates * (o.hops + 1)
    capacity = dict(LOOKUP.groups)["search_name"]
    if names > capacity:
        return f"n_candidates * (hops + 1) = {names} names exceed the {capacity} name slots"
    return None


def _household_limits(o: Any) -> str | None:
    capacity = dict(HOUSEHOLD.groups)["look"]
    if o.n_containers > capacity:
        return f"n_containers = {o.n_containers} exceeds the {capacity} look slots"
    return None


def _shop_limits(o: Any) -> str | None:
    capacity = dict(SHOP.groups)["click"]
    if o.n_items > capacity:
        return f"n_items = {o.n_items} exceeds the {capacity} click slots"
    return None


FAMILIES: dict[str, Family] = {
    "lookup": Family(LOOKUP, lookup_slots, _lookup_limits),
    "household": Family(HOUSEHOLD, household_slots, _household_limits),
    "shop": Family(SHOP, shop_slots, _shop_limits),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(
            f"environment {name!r} has no discrete action layout; the RL baseline supports "
            f"{', '.join(sorted(FAMILIES))} (other environments stay text-only)"
        )
    return FAMILIES[name]


def check_options(name: str, options: Any) -> None:
    """Raise ValueError when the environment's options need more slots than the layout has."""
    problem = family(name).limits(options)
    if problem is not None:
        raise ValueError(f"env.options for the RL baseline on {name!r}: {problem}; use fewer")
