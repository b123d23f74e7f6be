"""``lookup``: multi-hop questions over a tiny generated encyclopedia (HotPotQA in miniature).

"Where was the mentor of Alice born?" ``Search[Alice]`` lists several people named Alice, and the
question gives no way to tell which one is meant: that is the hidden information. Following one
candidate's chain (``Search[Alice Moss]`` -> taught by Bob Lee, ``Search[Bob Lee]`` -> born in Oslo)
and answering ``Finish[Oslo]`` ends the trial, so one trial tests one candidate. A failed trial
rules a candidate out; a reflection that says so lets the next trial try another one.

Departure from HotPotQA: no ``Lookup[keyword]`` tool (each page holds a single fact), and the
ambiguity is built in on purpose so that what a failed trial reveals is the key to the next one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from retro_ray.envs.base import Task, Trajectory
from retro_ray.envs.builtin.common import (
    CITIES,
    FIRST_NAMES,
    SURNAMES,
    BuiltinEnv,
    Outcome,
    bracket_action,
    normalise,
    sentences,
    stable_rng,
)
from retro_ray.envs.registry import EnvSpec, register

# relation in the question -> how a page states it
RELATIONS = {"mentor": "was taught by", "boss": "works for", "coach": "was coached by"}
FULL_NAME = re.compile(r"\b([A-Z][a-z]+ [A-Z][a-z]+)\b")
_FACT = re.compile(r"^([A-Z][a-z]+ [A-Z][a-z]+) (was taught by|works for|was coached by) (.+?)\.$")
_BORN = re.compile(r"^([A-Z][a-z]+ [A-Z][a-z]+) was born in (\w+)\.$")
_LISTING = re.compile(r"^People named (\w+): (.+)\.$")
_RIGHT = re.compile(r"right \w+ is ([A-Z][a-z]+ [A-Z][a-z]+)")


@dataclass(frozen=True)
class LookupOptions:
    n_candidates: int = 3
    """People who share the first name in the question; one is meant, and nothing says which.
    With 3, a reflection that rules out the failed candidate lifts the next trial from 1/3 to 1/2,
    a gain large enough for the policy gradient to see; with 4 it is 1/4 to 1/3."""
    hops: int = 1
    """Relations between the named person and the one whose birthplace is asked (1 to 3)."""
    max_steps: int = 6
    """Step limit of one trial. Finish ends a trial, so one trial can test one candidate only."""

    def validate(self) -> None:
        most = min(len(SURNAMES), len(CITIES))
        if not 2 <= self.n_candidates <= most:
            raise ValueError(f"n_candidates must be in 2..{most}, got {self.n_candidates}")
        if not 1 <= self.hops <= len(RELATIONS):
            raise ValueError(f"hops must be in 1..{len(RELATIONS)}, got {self.hops}")
        if self.max_steps < self.hops + 3:
            raise ValueError(
                f"max_steps must be >= hops + 3 = {self.hops + 3}, got {self.max_steps}"
            )


@dataclass(frozen=True)
class LookupInstance:
    first_name: str
    candidates: tuple[str, ...]  # full names sharing ``first_name``, in listing order
    meant: str  # the candidate the question is about (hidden)
    chains: dict[str, tuple[str, ...]]  # candidate -> the people along its chain, candidate first
    pages: dict[str, str]  # full name -> the one fact its page states
    answers: dict[str, str]  # candidate -> the birthplace at the end of its chain
    question: str


@lru_cache(maxsize=4096)
def generate(task_id: str, n_candidates: int, hops: int) -> LookupInstance:
    rng = stable_rng("lookup", task_id)
    first_name = rng.choice(FIRST_NAMES)
    candidates = tuple(f"{first_name} {s}" for s in rng.sample(SURNAMES, n_candidates))
    relations = rng.sample(sorted(RELATIONS), hops)  # relations[0] applies to the candidate
    others = [f"{f} {s}" for f in FIRST_NAMES if f != first_name for s in SURNAMES]
    middle = iter(rng.sample(others, n_candidates * hops))
    cities = rng.sample(CITIES, n_candidates)
    chains, pages, answers = {}, {}, {}
    for candidate, city in zip(candidates, cities, strict=True):
        chain = (candidate, *(next(middle) for _ in range(hops)))
        for person, relation, nxt in zip(chain, relations, chain[1:], strict=False):
            pages[person] = f"{person} {RELATIONS[relation]} {nxt}."
        pages[chain[-1]] = f"{chain[-1]} was born in {city}."
        chains[candidate], answers[candidate] = chain, city
    subject = first_name
    for relation in relations:
        subject = f"the {relation} of {subject}"
    question = f"Question: where was {subject} born?"
    meant = rng.choice(candidates)
    return LookupInstance(first_name, candidates, meant, chains, pages, answers, question)


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalise(prediction).split(), normalise(truth).split()
    common = sum(min(pred.count(t), gold.count(t)) for t in set(gold))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def asked_first_name(question: str) -> str:
    """The ambiguous first name at the end of "where was the mentor of Alice born?"."""
    return question.split(" of ")[-1].split()[0]


@dataclass(frozen=True)
class Advice:
    wrong: frozenset[str]  # candidates a reflection ruled out
    suggested: tuple[str, ...]  # candidates a reflection says to search next
    right: str | None  # the candidate a reflection names as the one meant


def searched_candidates(trajectory: Trajectory, listed: list[str]) -> tuple[list[str], str | None]:
    """The candidates of the trial's last listing (``listed`` when it saw none) and the last
    listed candidate it searched (None: it searched none)."""
    followed = None
    for step in trajectory.steps:
        if match := _LISTING.match(step.observation):
            listed = [n.strip() for n in match.group(2).split(",")]
        parsed = bracket_action(step.action)
        if parsed and parsed[0] == "search" and parsed[1] in listed:
            followed = parsed[1]
    return listed, followed


def read_advice(reflections: Sequence[str]) -> Advice:
    """What the oracle and ground-truth phrasings say, in whatever order they were written."""
    wrong: set[str] = set()
    suggested: list[str] = []
    right = None
    for sentence in sentences(reflections):
        if match := _RIGHT.search(sentence):
            right = match.group(1)
        elif "wrong" in sentence:
            wrong.update(FULL_NAME.findall(sentence))
        elif sentence.lower().startswith("next"):
            suggested = FULL_NAME.findall(sentence)
    return Advice(frozenset(wrong), tuple(suggested), right)


class LookupEnv(BuiltinEnv):
    name = "lookup"
    action_help = "Use Search[name] or Finish[answer]."
    Options = LookupOptions

    def __init__(self, options: LookupOptions | None = None) -> None:
        self.options = options or LookupOptions()
        super().__init__(self.options.max_steps)
        self.instance: LookupInstance | None = None

    def _instance(self, task: Task) -> LookupInstance:
        return generate(task.task_id, self.options.n_candidates, self.options.hops)

    def _begin(self, task: Task) -> str:
        self.instance = self._instance(task)
        return self.instance.question

    def _act(self, action: str) -> Outcome | None:
        parsed = bracket_action(action)
        if parsed is None or parsed[0] not in ("search", "finish") or not parsed[1]:
            return None
        assert self.instance is not None
        verb, argument = parsed
        if verb == "finish":
            truth = self.instance.answers[self.instance.meant]
            won = normalise(argument) == normalise(truth)
            observation = "Correct." if won else "Wrong answer."
            return Outcome(observation, token_f1(argument, truth), won, terminal=True)
        return Outcome(self._search(argument), self.score)

    def _search(self, query: str) -> str:
        assert self.instance is not None
        people = {normalise(name): name for name in self.instance.pages}
        if normalise(query) in people:
            return self.instance.pages[people[normalise(query)]]
        named = [n for n in self.instance.pages if normalise(n).split()[0] == normalise(query)]
        if len(named) == 1:
            return self.instance.pages[named[0]]
        if named:
            listed = [c for c in self.instance.candidates if c in named] or sorted(named)
            return f"People named {query.strip().title()}: {', '.join(listed)}."
        return f"No page for {query}."

    # ---- reference policies -------------------------------------------------------------------

    def expert_action(self) -> str:
        assert self.instance is not None
        seen = set(self.observations)
        for person in self.instance.chains[self.instance.meant]:
            if self.instance.pages[person] not in seen:
                return f"Search[{person}]"
        return f"Finish[{self.instance.answers[self.instance.meant]}]"

    def random_action(self, rng: random.Random) -> str:
        assert self.instance is not None
        seen = " ".join(self.observations)
        names = sorted(set(FULL_NAME.findall(seen)))
        cities = sorted({m for m in CITIES if m in seen}) or [rng.choice(CITIES)]
        choices = [f"Search[{self.instance.first_name}]"]
        choices += [f"Search[{n}]" for n in names] + [f"Finish[{c}]" for c in cities]
        return rng.choice(choices)

    def scripted_action(self, reflections: Sequence[str], rng: random.Random) -> str:
        """Reacts to the last observation: follow a relation, answer a birthplace, or pick a
        candidate from the listing (the reflections' advice first, ``rng`` among equals)."""
        advice = read_advice(reflections)
        first_name = asked_first_name(self.first_observation)
        last = self.observations[-1] if self.log else ""
        if match := _BORN.match(last):
            return f"Finish[{match.group(2)}]"
        if match := _FACT.match(last):
            return f"Search[{match.group(3)}]"
        if advice.right and not self.log:
            return f"Search[{advice.right}]"
        if match := _LISTING.match(last):
            listed = [n.strip() for n in match.group(2).split(",")]
            open_ = [n for n in listed if n not in advice.wrong] or listed
            preferred = [n for n in open_ if n in advice.suggested or n == advice.right]
            return f"Search[{rng.choice(preferred or open_)}]"
        return f"Search[{first_name}]"

    # ---- reflectors ---------------------------------------------------------------------------

    def trajectory_oracle(self, trajectory: Trajectory, memory: Sequence[str]) -> str:
        """Names the candidates that failed trials ruled out (this one and those the earlier
        reflections named) and the listed candidates still open: nothing the trials did not show."""
        prior = read_advice(memory)
        listed, followed = searched_candidates(trajectory, list(prior.suggested))
        finished_wrong = any(s.observation.startswith("Wrong answer") for s in trajectory.steps)
        wrong = set(prior.wrong)
        if finished_wrong and followed:
            wrong.add(followed)
        first_name = asked_first_name(trajectory.first_observation)
        if not wrong:
            return "I ran out of steps. Pick one person, follow the chain, then Finish."
        ordered = sorted(wrong)
        verb = "was" if len(ordered) == 1 else "were"
        text = f"{', '.join(ordered)} {verb} the wrong {first_name}."
        remaining = [n for n in listed if n not in wrong]
        if remaining:
            text += f" Next, search {', '.join(remaining)}."
        return text

    def ground_truth_reflection(self, task: Task) -> str:
        instance = self._instance(task)
        return f"The right {instance.first_name} is {instance.meant}."

    def misleading_reflection(self, trajectory: Trajectory, rng: random.Random) -> str:
        """Confident and wrong, from the trajectory alone: rules out a listed candidate the trial
        never tried and sends the next trial back to the one that failed (or calls it the right
        one). Training data for the retrospective base, whose samples must vary in quality."""
        first_name = asked_first_name(trajectory.first_observation)
        listed, followed = searched_candidates(trajectory, [])
        if not listed:
            return f"The answer is {rng.choice(CITIES)}. Finish with it at once."
        followed = followed or rng.choice(listed)
        untried = [n for n in listed if n != followed]
        if rng.random() < 0.5 and untried:
            return f"{rng.choice(untried)} was the wrong {first_name}. Next, search {followed}."
        return f"The right {first_name} is {followed}."


register(
    EnvSpec(
        name=LookupEnv.name,
        factory=LookupEnv,
        options_cls=LookupOptions,
        description="multi-hop questions with an ambiguous name (HotPotQA in miniature)",
    )
)
