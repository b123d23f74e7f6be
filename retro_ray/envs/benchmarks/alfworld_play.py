"""The ALFWorld scripted actor's decisions (``ScriptedPlay``): from the goal, what the trial has
shown so far and the advice of the reflections, the next command. ``AlfworldEnv.scripted_action``
builds one per step from what an LLM actor's prompt holds; nothing here sees the game's state,
its walkthrough or its admissible commands.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from retro_ray.envs.benchmarks.alfworld_reflect import TREATMENT, Advice, Findings, Goal, of_kind

_STAND_INS = {"sinkbasin": ("bathtubbasin",)}
"""Appliances the games accept in place of the usual one when a room lacks it."""


@dataclass
class ScriptedPlay:
    """One decision of the scripted actor, from the goal, what this trial has shown so far and
    the advice of the reflections.

    The rules, in order:

    1. A winning plan in the advice is played command by command while the trial follows it.
    2. Holding the object: treat it at the appliance the task needs (sinkbasin, microwave,
       fridge), then carry it to an instance of the destination (opened first if closed; the
       second object of a pick-two task goes where the first went), or, for a look-at task, to the
       lamp (where this trial saw it, else where the advice says) and switch it on.
    3. Not holding it: take it where this trial sees it; open a closed place just arrived at;
       examine a place that shares the actor's spot (the game ignores a walk to it: cabinets 22
       and 23 of a kitchen may stand together); go back to a place this trial saw it; otherwise
       search: first the places the advice says hold it, then those it calls unsearched, then
       every place not yet looked at that it does not rule out, then the ruled-out ones.

    Ties are broken with ``rng`` (seeded by the task and the reflections, so with no reflection
    every trial makes the same choices): with no advice the search order is a fixed shuffle of
    the room, which in a room of 20 to 40 places often runs out of steps. A command the game
    answered "Nothing happens." is not repeated; the actor searches on instead."""

    goal: Goal
    seen: Findings
    advice: Advice
    actions: list[str]  # this trial's commands so far
    rng: random.Random

    def next_action(self) -> str:
        if step := self._plan_step():
            return step
        action = self._deliver(self.seen.holding) if self.seen.holding else self._fetch()
        if action in self.seen.ignored and not action.startswith("go to "):
            return self._search(self.advice.object_at, self.advice.ruled_out)
        return action

    def _plan_step(self) -> str:
        plan, done = self.advice.plan, self.actions
        if len(done) < len(plan) and list(plan[: len(done)]) == done:
            return plan[len(done)]
        return ""

    # ---- finding the object ---------------------------------------------------------------

    def _fetch(self) -> str:
        here, wanted = self.seen.at, self._wanted()
        if wanted.get(here):
            return f"take {wanted[here][0]} from {here}"
        if here in self.seen.closed:
            return f"open {here}"
        if here and here not in self.seen.contents and f"examine {here}" not in self.actions:
            return f"examine {here}"  # a place that shares this spot, not yet looked at
        if wanted:
            return f"go to {self.rng.choice(list(wanted))}"
        return self._search(self.advice.object_at, self.advice.ruled_out)

    def _wanted(self) -> dict[str, list[str]]:
        """Where this trial has seen an instance of the object it can still take: not one taken
        already, not one in the pick-two destination, not one the game refused."""
        taken = {obj for obj, _ in self.seen.picked}
        filled = {place for _, place in self.seen.moved}
        wanted: dict[str, list[str]] = {}
        for place, things in self.seen.contents.items():
            free = [
                t
                for t in things
                if of_kind(t, self.goal.obj)
                and t not in taken
                and f"take {t} from {place}" not in self.seen.ignored
            ]
            if free and place not in filled:
                wanted[place] = free
        return wanted

    def _search(self, advised: Sequence[str], ruled_out: frozenset[str]) -> str:
        """Go to the next place to look, by the tiers of rule 3."""
        looked = set(self.seen.visited) | set(self.seen.contents)
        room = self.seen.room
        fresh = [p for p in room if p not in looked]
        tiers = (
            [p for p in advised if p not in looked],
            [p for p in self.advice.unsearched if p in fresh and p not in ruled_out],
            [p for p in fresh if p not in ruled_out],
            fresh,
            [p for p in room if p != self.seen.at],
        )
        tier = next((t for t in tiers if t), [])
        return f"go to {self.rng.choice(tier)}" if tier else "look"

    # ---- finishing the task with the object in hand ---------------------------------------

    def _deliver(self, obj: str) -> str:
        treatment = TREATMENT.get(self.goal.task_type)
        if treatment and obj not in self.seen.treated:
            verb, kind = treatment
            appliance = self._instance(kind)
            return self._there(appliance, f"{verb} {obj} with {appliance}")
        if self.goal.task_type == "look_at_obj_in_light":
            return self._light()
        destination = self._destination()
        if self.seen.at == destination and destination in self.seen.closed:
            return f"open {destination}"
        return self._there(destination, f"move {obj} to {destination}")

    def _destination(self) -> str:
        """The second object of a pick-two task goes where the first went."""
        return self.seen.moved[0][1] if self.seen.moved else self._instance(self.goal.receptacle)

    def _light(self) -> str:
        lamp = self._lamp()
        if lamp is None:
            return self._search([place for _, place in self.advice.lamps], frozenset())
        name, place = lamp
        return self._there(place, f"use {name}")

    def _lamp(self) -> tuple[str, str] | None:
        """(lamp, place): one this trial saw, else one the advice names at a place this trial
        has not yet looked at (a lamp it said was there and is not was wrong advice)."""
        for place, things in self.seen.contents.items():
            if lamp := next((t for t in things if of_kind(t, self.goal.receptacle)), None):
                return lamp, place
        fresh = [(n, p) for n, p in self.advice.lamps if p not in self.seen.contents]
        return fresh[0] if fresh else None

    def _instance(self, kind: str) -> str:
        """The place of ``kind`` to use: the one here, else one of the room's (rng); a bathroom
        without a sinkbasin cleans in its bathtubbasin."""
        for usable in (kind, *_STAND_INS.get(kind, ())):
            instances = [p for p in self.seen.room if of_kind(p, usable)]
            if instances:
                break
        if self.seen.at in instances:
            return self.seen.at
        return self.rng.choice(instances) if instances else f"{kind} 1"

    def _there(self, place: str, action: str) -> str:
        return action if self.seen.at == place else f"go to {place}"
