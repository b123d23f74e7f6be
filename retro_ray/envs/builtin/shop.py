"""``shop``: buy the item an instruction asks for, in the customer's size (WebShop in miniature).

"Instruction: buy a red shirt." ``search[shirt]`` lists items, ``click[item 2]`` opens one and shows
its sizes, ``choose[M]`` picks a size, ``buy`` ends the trial. The customer's size is hidden: the
instruction does not say it. The score is the share of the three requested attributes (type, color,
size) the order matches, so a trial can score 2/3 and the return can fall between trials. A returned
order says what was wrong ("size too small"), so a reflection can narrow the size down.

Departure from WebShop: a handful of generated items instead of a crawled catalogue, and one hidden
attribute (the size) instead of attributes written into the instruction.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from retro_ray.envs.base import Task, Trajectory
from retro_ray.envs.builtin.common import BuiltinEnv, Outcome, bracket_action, sentences, stable_rng
from retro_ray.envs.registry import EnvSpec, register

KINDS = ("shirt", "jacket", "coat", "dress", "skirt", "sweater", "hoodie", "vest")
COLORS = ("red", "blue", "green", "black", "white", "gray", "pink", "brown")
SIZES = ("XS", "S", "M", "L", "XL", "XXL")  # smallest first
_INSTRUCTION = re.compile(r"buy a (\w+) (\w+)\.")
_RESULT = re.compile(r"item (\d+) (\w+) (\w+)")
_OFFERED = re.compile(r"Sizes: ([A-Z, ]+)\.")
_SIZE = r"(XXL|XL|XS|S|M|L)\b"
_SIZE_FACT = re.compile(r"[Ss]ize " + _SIZE + r" was (too small|too large|wrong)")
_CHOOSE = re.compile(r"[Cc]hoose size " + _SIZE)
_CHOOSE_FROM = re.compile(r"[Cc]hoose from ([A-Z, ]+)")


@dataclass(frozen=True)
class ShopOptions:
    n_items: int = 5
    """Items in the catalogue; one has the requested type and color."""
    n_sizes: int = 4
    """Sizes each item comes in (consecutive, from XS to XXL); the customer wears one of them."""
    max_steps: int = 6
    """Step limit of one trial (search, click, choose, buy takes 4)."""

    def validate(self) -> None:
        if not 2 <= self.n_items <= len(KINDS):
            raise ValueError(f"n_items must be in 2..{len(KINDS)}, got {self.n_items}")
        if not 2 <= self.n_sizes <= len(SIZES):
            raise ValueError(f"n_sizes must be in 2..{len(SIZES)}, got {self.n_sizes}")
        if self.max_steps < 4:
            raise ValueError(
                f"max_steps must be >= 4 (search, click, choose, buy), got {self.max_steps}"
            )


@dataclass(frozen=True)
class ShopInstance:
    color: str
    kind: str
    items: tuple[tuple[str, str], ...]  # item k (1-based) -> (color, kind)
    sizes: tuple[str, ...]  # the sizes every item comes in, smallest first
    size: str  # the customer's size (hidden)


@lru_cache(maxsize=4096)
def generate(task_id: str, n_items: int, n_sizes: int) -> ShopInstance:
    rng = stable_rng("shop", task_id)
    color, kind = rng.choice(COLORS), rng.choice(KINDS)
    other_colors = rng.sample([c for c in COLORS if c != color], n_items - 1)
    other_kinds = iter(rng.sample([k for k in KINDS if k != kind], n_items // 2))
    # Distractors share the type or the color with the requested item, so reading matters.
    items = [(color, kind)]
    for i, other_color in enumerate(other_colors):
        items.append((other_color, kind) if i % 2 == 0 else (color, next(other_kinds)))
    rng.shuffle(items)
    start = rng.randrange(len(SIZES) - n_sizes + 1)
    sizes = SIZES[start : start + n_sizes]
    return ShopInstance(color, kind, tuple(items), sizes, rng.choice(sizes))


@dataclass(frozen=True)
class Advice:
    too_small: frozenset[str]
    too_large: frozenset[str]
    wrong: frozenset[str]
    size: str | None  # the size a reflection says to choose
    shortlist: tuple[str, ...] = ()  # the sizes a reflection says to choose from

    def allows(self, size: str) -> bool:
        rank = SIZES.index(size)
        return (
            size not in self.wrong
            and (not self.shortlist or size in self.shortlist)
            and all(rank > SIZES.index(s) for s in self.too_small)
            and all(rank < SIZES.index(s) for s in self.too_large)
        )


def read_advice(reflections: Sequence[str]) -> Advice:
    facts: dict[str, set[str]] = {"too small": set(), "too large": set(), "wrong": set()}
    size = None
    shortlist: tuple[str, ...] = ()
    for sentence in sentences(reflections):
        for found, verdict in _SIZE_FACT.findall(sentence):
            facts[verdict].add(found)
        if match := _CHOOSE.search(sentence):
            size = match.group(1)
        if match := _CHOOSE_FROM.search(sentence):
            shortlist = tuple(s for s in re.split(r"[, ]+", match.group(1)) if s in SIZES)
    small, large, wrong = (frozenset(facts[k]) for k in ("too small", "too large", "wrong"))
    return Advice(small, large, wrong, size, shortlist)


class ShopEnv(BuiltinEnv):
    name = "shop"
    action_help = "Use search[words], click[item N], choose[size] or buy."
    Options = ShopOptions

    def __init__(self, options: ShopOptions | None = None) -> None:
        self.options = options or ShopOptions()
        super().__init__(self.options.max_steps)
        self.instance: ShopInstance | None = None
        self.listed: set[int] = set()  # items shown by a search this trial
        self.item: int | None = None  # the item open now
        self.size: str | None = None

    def _instance(self, task: Task) -> ShopInstance:
        return generate(task.task_id, self.options.n_items, self.options.n_sizes)

    def _begin(self, task: Task) -> str:
        self.instance = self._instance(task)
        self.listed, self.item, self.size = set(), None, None
        return f"Instruction: buy a {self.instance.color} {self.instance.kind}."

    def _act(self, action: str) -> Outcome | None:
        assert self.instance is not None
        if action.lower().rstrip(".") in ("buy", "buy now", "buy[]", "click[buy]"):
            return self._buy()
        parsed = bracket_action(action)
        if parsed is None or not parsed[1]:
            return None
        verb, argument = parsed
        if verb == "search":
            words = set(argument.lower().split())
            hits = [k for k, item in enumerate(self.instance.items, 1) if words & set(item)]
            if not hits:
                return Outcome(f"No results for {argument}.", 0.0)
            self.listed.update(hits)
            shown = ", ".join(f"item {k} {' '.join(self.instance.items[k - 1])}" for k in hits)
            return Outcome(f"Results: {shown}.", 0.0)
        if verb == "click":
            number = argument.lower().removeprefix("item").strip()
            if not number.isdigit() or int(number) not in self.listed:
                return Outcome(f"No {argument} in the results. Search first.", 0.0)
            self.item, self.size = int(number), None
            described = " ".join(self.instance.items[self.item - 1])
            return Outcome(f"{described}. Sizes: {', '.join(self.instance.sizes)}.", 0.0)
        if verb == "choose":
            if self.item is None:
                return Outcome("Click an item first.", 0.0)
            if argument.upper() not in self.instance.sizes:
                return Outcome(f"Size {argument} is not offered.", 0.0)
            self.size = argument.upper()
            return Outcome(f"Size {self.size} chosen.", 0.0)
        return None

    def _buy(self) -> Outcome:
        assert self.instance is not None
        if self.item is None:
            return Outcome("Click an item first.", 0.0)
        color, kind = self.instance.items[self.item - 1]
        problems = [] if kind == self.instance.kind else ["wrong type"]
        problems += [] if color == self.instance.color else ["wrong color"]
        if self.size is None:
            problems.append("no size chosen")
        elif self.size != self.instance.size:
            smaller = SIZES.index(self.size) < SIZES.index(self.instance.size)
            problems.append("size too small" if smaller else "size too large")
        score = 1.0 - len(problems) / 3
        if not problems:
            return Outcome("Order accepted.", 1.0, won=True, terminal=True)
        return Outcome(f"Order returned: {', '.join(problems)}.", score, terminal=True)

    # ---- reference policies -------------------------------------------------------------------

    def expert_action(self) -> str:
        assert self.instance is not None
        wanted = self.instance.items.index((self.instance.color, self.instance.kind)) + 1
        if wanted not in self.listed:
            return f"search[{self.instance.color} {self.instance.kind}]"
        if self.item != wanted:
            return f"click[item {wanted}]"
        if self.size != self.instance.size:
            return f"choose[{self.instance.size}]"
        return "buy"

    def random_action(self, rng: random.Random) -> str:
        assert self.instance is not None
        form = rng.choice(("search", "click", "choose", "buy"))
        if form == "search":
            return f"search[{rng.choice((self.instance.color, self.instance.kind))}]"
        if form == "click":
            return f"click[item {rng.randint(1, len(self.instance.items))}]"
        if form == "choose":
            return f"choose[{rng.choice(self.instance.sizes)}]"
        return "buy"

    def scripted_action(self, reflections: Sequence[str], rng: random.Random) -> str:
        """Search the type, open the item of the right color, choose a size the reflections
        allow (``rng`` among those), buy."""
        match = _INSTRUCTION.search(self.first_observation)
        assert match is not None
        color, kind = match.groups()
        last = self.observations[-1] if self.log else ""
        if last.endswith("chosen."):
            return "buy"
        if offered := _OFFERED.search(last):
            sizes = [s.strip() for s in offered.group(1).split(",")]
            advice = read_advice(reflections)
            if advice.size in sizes:
                return f"choose[{advice.size}]"
            allowed = [s for s in sizes if advice.allows(s)] or sizes
            return f"choose[{rng.choice(allowed)}]"
        results = [m.groups() for o in self.observations for m in _RESULT.finditer(o)]
        if results:
            exact = [n for n, c, k in results if (c, k) == (color, kind)]
            same_kind = [n for n, _, k in results if k == kind]
            return f"click[item {rng.choice(exact or same_kind or [n for n, _, _ in results])}]"
        return f"search[{kind}]"

    # ---- reflectors ---------------------------------------------------------------------------

    def trajectory_oracle(self, trajectory: Trajectory, memory: Sequence[str]) -> str:
        """States what each returned order said about the size (this trial's and the earlier
        reflections'), the sizes still possible, and a wrong item if one was bought."""
        prior = read_advice(memory)
        facts = {s: "too small" for s in prior.too_small} | {
            s: "too large" for s in prior.too_large
        }
        facts |= {s: "wrong" for s in prior.wrong}
        offered: list[str] = []
        chosen = None
        notes: list[str] = []
        for step in trajectory.steps:
            if found := _OFFERED.search(step.observation):
                offered = [s.strip() for s in found.group(1).split(",")]
            if step.observation.endswith("chosen."):
                chosen = step.observation.split()[1]
            if step.observation.startswith("Order returned"):
                for verdict in ("too small", "too large"):
                    if f"size {verdict}" in step.observation and chosen:
                        facts[chosen] = verdict
                if "wrong" in step.observation:
                    notes.append(f"I bought the wrong item; buy the {_wanted(trajectory)}.")
                if "no size chosen" in step.observation:
                    notes.append("Choose a size before buying.")
        if not facts and not notes:
            return "I ran out of steps. Search, click the item, choose a size, then buy."
        order = sorted(facts, key=SIZES.index)
        text = " ".join(f"Size {s} was {facts[s]}." for s in order)
        advice = read_advice([text])
        remaining = [s for s in offered if advice.allows(s)]
        if len(remaining) == 1:
            text += f" Choose size {remaining[0]}."
        elif remaining:
            text += f" Choose from {', '.join(remaining)}."
        return " ".join([text, *notes]).strip()

    def ground_truth_reflection(self, task: Task) -> str:
        return f"Choose size {self._instance(task).size}."

    def misleading_reflection(self, trajectory: Trajectory, rng: random.Random) -> str:
        """Confident and wrong, from the trajectory alone: turns a returned order's verdict
        around (too small becomes too large) and points at the wrong side, or repeats the size
        that was returned. Training data for the retrospective base."""
        offered: list[str] = []
        chosen = verdict = None
        for step in trajectory.steps:
            if found := _OFFERED.search(step.observation):
                offered = [s.strip() for s in found.group(1).split(",")]
            if step.observation.endswith("chosen."):
                chosen = step.observation.split()[1]
            for candidate in ("too small", "too large"):
                if f"size {candidate}" in step.observation:
                    verdict = candidate
        offered = offered or list(SIZES[1:5])
        if chosen is None or verdict is None:
            return f"Choose size {rng.choice(offered)}."
        if rng.random() < 0.5:
            return f"Choose size {chosen}."
        flipped = "too large" if verdict == "too small" else "too small"
        text = f"Size {chosen} was {flipped}."
        wrong_side = [s for s in offered if read_advice([text]).allows(s)]
        return f"{text} Choose from {', '.join(wrong_side)}." if wrong_side else text


def _wanted(trajectory: Trajectory) -> str:
    match = _INSTRUCTION.search(trajectory.first_observation)
    return " ".join(match.groups()) if match else "requested item"


register(
    EnvSpec(
        name=ShopEnv.name,
        factory=ShopEnv,
        options_cls=ShopOptions,
        description="buy the requested item in the customer's hidden size (WebShop in miniature)",
    )
)
