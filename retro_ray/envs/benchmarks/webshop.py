"""``webshop``: WebShop through HTTP, against a self-hosted server of the official Flask app.

The catalogue (1.18M products) and the search engine live in the server (princeton-nlp/WebShop,
``web_agent_site/app.py``; see docs/benchmarks.md to run it); this adapter only browses it, as
ReAct, Reflexion and Retroformer do. Actions are the official text-mode ones:

* ``search[query]`` on the search page opens ``/search_results/<session>/<keywords>/<page>``;
* ``click[button]`` with any clickable the page shows in brackets: a product id opens
  ``/item_page/<session>/<asin>/<keywords>/<page>/<options>``; an option value (a size, a colour)
  reopens it with the option set; Description / Features / Reviews open ``/item_sub_page/...``;
  ``Next >`` / ``< Prev`` page through results or go back; Back to Search returns to
  ``/<session>``; Buy Now opens ``/done/<session>/<asin>/<options>``, which ends the episode and
  shows the score (0..1). ``think[...]`` answers "OK." (ReAct's thought action).

Tasks are the server's goals by index: session ``fixed_<i>`` makes the app use goal ``i`` of its
fixed shuffle, as the official environment does. Splits follow the WebShop paper's index ranges:
test = goals 0-499 (the 500 test instructions the papers report on), validation = 500-1499,
train = 1500 onwards. ``won`` means a score of 1.0 (every attribute, option and the price matched).

Not available: an expert policy and the ground-truth reflection. The server shows the goal's target
only after a purchase, so neither can be computed honestly; both raise a clear error.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from retro_ray.envs.base import StepResult, Task, Trajectory, check_split
from retro_ray.envs.benchmark import BenchmarkEnv
from retro_ray.envs.benchmarks.webshop_site import Page, SiteClient, WebShopServerError
from retro_ray.envs.builtin.common import EPISODE_OVER, STEP_LIMIT_NOTE, bracket_action
from retro_ray.envs.registry import EnvSpec, register

ACTION_HELP = (
    "Use search[query] on the search page, or click[x] with x one of the [bracketed] items."
)
SPLIT_RANGES = {"test": (0, 500), "validation": (500, 1500), "train": (1500, None)}
SUB_PAGES = ("description", "features", "reviews", "attributes")
_GOAL = re.compile(r"^fixed_(\d+)$")
_TOKEN = re.compile(r"\[\[?([^\[\]]+)\]?\]")
_BOUGHT = re.compile(r"I bought (\S+) ")


@dataclass(frozen=True)
class WebShopOptions:
    base_url: str = "http://127.0.0.1:3000"
    """Where the official WebShop Flask app listens (its default port is 3000)."""
    max_steps: int = 15
    """Step limit of one trial (ReAct and Reflexion allow WebShop about 15 actions)."""
    timeout_s: float = 60.0
    """Per request. The app loads its catalogue on the first request, which can take minutes."""
    retries: int = 3
    """Further tries of a request that failed to connect or got a 5xx, with doubling waits."""
    backoff_s: float = 0.5
    num_goals: int = 12087
    """Goals the server holds: 12,087 human instructions with the full catalogue (``setup.sh -d
    all``), fewer with ``-d small``. Every split's range is cut at this number."""
    results_shown: int = 3
    """Products shown (and clickable) per results page; ReAct's prompts show 3 of the 10."""
    max_observation_chars: int = 2000

    def validate(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        for name in ("max_steps", "results_shown", "max_observation_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError("timeout_s must be > 0, retries and backoff_s >= 0")
        if self.num_goals < 1:
            raise ValueError(f"num_goals must be >= 1, got {self.num_goals}")


class WebShopEnv(BenchmarkEnv):
    name = "webshop"
    Options = WebShopOptions
    blocking_io = True  # HTTP requests with retry sleeps: off the event loop (agents.trial_loop)

    def __init__(self, options: WebShopOptions | None = None, data_path: str | None = None):
        if data_path is not None:
            raise ValueError(
                "webshop reads no data file: the data lives in the WebShop server; "
                "set env.options.base_url instead of env.data_path / --data"
            )
        self.options = options or WebShopOptions()
        self.max_steps = self.options.max_steps
        o = self.options
        self.client = SiteClient(o.base_url, o.timeout_s, o.retries, o.backoff_s)
        self.base_url = self.client.base_url
        self.session = ""
        self.instruction = ""
        self.page = Page()
        self.where: dict[str, Any] = {}
        self.steps_taken, self.done, self.won, self.score = 0, False, False, 0.0

    def tasks(self, split: str, n: int, seed: int = 0) -> list[Task]:
        """Goals of ``split``'s index range: the first ``n`` (seed 0) or ``n`` drawn with ``seed``."""
        check_split(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        low, high = SPLIT_RANGES[split]
        end = self.options.num_goals if high is None else min(high, self.options.num_goals)
        indices = list(range(low, end))
        if seed:
            random.Random(seed).shuffle(indices)
        return [Task(self.name, f"fixed_{i}", split, {"goal": i}) for i in indices[:n]]

    def _open(self, kind: str, **where: Any) -> Page:
        """Load a page of ``kind`` at ``where`` (keywords, page, asin, options, sub)."""
        merged = {**self.where, **where}
        self.page = self.client.fetch(self.client.path(kind, self.session, merged))
        self.where = {**merged, "kind": kind}
        return self.page

    # ---- episode -----------------------------------------------------------------------------------

    def reset(self, task: Task) -> str:
        if task.env != self.name or not _GOAL.fullmatch(task.task_id):
            raise ValueError(f"task {task.task_id!r} is not a webshop goal (fixed_<index>)")
        self.session, self.where = task.task_id, {}
        self.steps_taken, self.done, self.won, self.score = 0, False, False, 0.0
        self._open("search")
        self.instruction = self.page.instruction
        return self._render()

    def _render(self) -> str:
        chosen = set(self.where.get("options", {}).values())
        o = self.options
        return self.page.render(
            chosen, o.results_shown, o.max_observation_chars, self.where["kind"] == "search"
        )

    def clickables(self) -> list[str]:
        """What click[...] accepts here: buttons (but Search), shown products, option values."""
        buttons = [b for b in self.page.buttons if b.lower() != "search"]
        return (
            buttons
            + self.page.products[: self.options.results_shown]
            + list(self.page.option_types)
        )

    def step(self, action: str) -> StepResult:
        if not self.session:
            raise RuntimeError("call reset(task) before step(action)")
        if self.done:
            return StepResult(EPISODE_OVER, 0.0, True, self._info())
        self.steps_taken += 1
        observation = self._act(action.strip())
        reward = 0.0
        if self.where.get("kind") == "done" and not self.done:
            self.done = True
            self.score = self.page.score or 0.0
            self.won, reward = self.score >= 1.0, self.score
        truncated = not self.done and self.steps_taken >= self.max_steps
        if truncated:
            self.done = True
            observation = f"{observation}\n{STEP_LIMIT_NOTE}"
        info = self._info()
        if truncated:
            info["truncated"] = True
        return StepResult(observation, reward, self.done, info)

    def _info(self) -> dict[str, Any]:
        return {"won": self.won, "score": self.score, "steps": self.steps_taken}

    def _act(self, action: str) -> str:
        parsed = bracket_action(action)
        if parsed is None or parsed[0] not in ("search", "click", "think") or not parsed[1]:
            return f"Invalid action. {ACTION_HELP}"
        verb, argument = parsed
        if verb == "think":
            return "OK."
        if verb == "search":
            keywords = argument.lower().replace("/", " ").split()
            if not self.page.has_search_bar:
                return "Invalid action: this page has no search bar; click[Back to Search] first."
            if not keywords:
                return f"Invalid action: the search query is empty. {ACTION_HELP}"
            self._open("results", keywords=keywords, page=1, options={})
            return self._render()
        return self._click(argument)

    def _click(self, argument: str) -> str:
        kind, target = self.where["kind"], argument.lower()
        by_name = {c.lower(): c for c in self.clickables()}
        back = next((b for b in self.page.buttons if b.startswith("<")), None)
        if target == "< prev" and back is not None:  # any "< ..." back button answers to < Prev
            target = back.lower()
        if target not in by_name:
            return self._not_clickable(argument)
        name = by_name[target]
        if target == "back to search":
            self._open("search", options={})
        elif target == "buy now":
            self._open("done")
            if self.page.score is None:
                raise WebShopServerError(f"the done page of {self.base_url} shows no score")
            return f"Your score (min 0.0, max 1.0): {self.page.score}"
        elif target == "next >":
            self._open("results", page=int(self.where["page"]) + 1)
        elif target == (back or "").lower():
            previous = {"results": "results", "item": "results", "sub": "item"}[kind]
            page = int(self.where["page"]) - (1 if kind == "results" else 0)
            self._open(previous, page=page, **({"options": {}} if kind == "item" else {}))
        elif target in SUB_PAGES and kind == "item":
            self._open("sub", sub=name)
        elif name in self.page.option_types:
            options = {**self.where.get("options", {}), self.page.option_types[name]: name}
            self._open("item", options=options)
            return f"You have clicked {name}."
        else:  # a product id on a results page
            self._open("item", asin=name, options={})
        return self._render()

    def _not_clickable(self, argument: str) -> str:
        text = f'Invalid action: "{argument}" is not clickable on this page.'
        if argument.lower() == "search" or self.page.has_search_bar:
            text += " Use search[query] to search."
        shown = self.clickables()
        return text + (f" Clickable: {', '.join(f'[{c}]' for c in shown)}." if shown else "")

    # ---- reference policies ------------------------------------------------------------------------

    def expert_action(self) -> str:
        raise ValueError(
            "webshop has no expert policy: the WebShop server reveals a goal's target product "
            "only after a purchase; use --policy random, or an LLM actor"
        )

    def random_action(self, rng: random.Random) -> str:
        if self.page.has_search_bar:
            words = self.instruction.split() or ["item"]
            return f"search[{' '.join(rng.sample(words, min(len(words), 4)))}]"
        return f"click[{rng.choice(self.clickables())}]"

    # ---- reflectors --------------------------------------------------------------------------------

    def trajectory_oracle(self, trajectory: Trajectory, memory: Sequence[str]) -> str:
        """What the failed trial showed: the product bought, its options and score, options the
        item offered that the instruction names but were not chosen; or that steps ran out."""
        instruction = trajectory.first_observation.lower()
        previous, item, title = trajectory.first_observation, "", ""
        offered: dict[str, str] = {}  # option value -> type, as the item page listed them
        chosen: dict[str, str] = {}
        queries, bought, score, invalid = [], "", None, 0
        for step in trajectory.steps:
            verb, argument = bracket_action(step.action) or ("", "")
            lines = previous.splitlines()
            if step.observation.startswith("Invalid action"):
                invalid += 1
            elif verb == "search":
                queries.append(argument)
            elif step.observation.startswith("Your score"):
                bought, score = item, float(step.observation.split(":")[-1])
            elif step.observation.startswith("You have clicked") and argument.lower() in offered:
                chosen[offered[argument.lower()]] = argument.lower()
            elif "[Buy Now]" in step.observation and f"[{argument}]".lower() in (
                ln.lower() for ln in lines
            ):
                at = [ln.lower() for ln in lines].index(f"[{argument}]".lower())
                item, title, chosen = argument.upper(), (lines[at + 1 :] or [""])[0][:80], {}
                offered = _offered(step.observation)
            previous = step.observation
        if bought:
            options = ", ".join(f"{t} {v}" for t, v in chosen.items()) or "no options chosen"
            parts = [
                f'I bought {bought} ("{title}") with {options} and scored {score:g}: '
                "it did not match everything the instruction asks for."
            ]
            missed = [v for v in offered if v not in chosen.values() and _names(instruction, v)]
            if missed:
                listed = ", ".join(missed)
                parts.append(f"The instruction names {listed}, which the item offered: choose it.")
            parts.append(
                "Next time open an item whose title names the product and its attributes, "
                "choose every option the instruction names, keep within the price, then Buy Now."
            )
        else:
            searched = "; ".join(queries) or "nothing"
            parts = [
                f"I ran out of steps before buying (searched: {searched}). Buy sooner: one search, "
                "open the best-matching item, choose its options, click[Buy Now]."
            ]
        earlier = [b for text in memory for b in _BOUGHT.findall(text) if b != bought]
        if earlier:
            parts.append(
                f"Earlier purchases that scored below 1: {', '.join(dict.fromkeys(earlier))}."
            )
        if invalid:
            parts.append(f"{invalid} action(s) were invalid. {ACTION_HELP}")
        return " ".join(parts)

    def ground_truth_reflection(self, task: Task) -> str:
        raise ValueError(
            "webshop has no ground-truth reflection: the WebShop server reveals a goal's target "
            "only after a purchase; use the trajectory oracle or an LLM reflector"
        )


def _offered(item_page: str) -> dict[str, str]:
    """Option values an item page listed, by line ``size [s] [[m]] [l]``, mapped to their type."""
    found = {}
    for line in item_page.splitlines():
        head = line.split("[")[0].strip()
        if head and "[" in line:
            found.update({v.lower(): head for v in _TOKEN.findall(line)})
    return found


def _names(instruction: str, value: str) -> bool:
    return re.search(rf"(?<![\w']){re.escape(value.lower())}(?![\w'])", instruction) is not None


register(
    EnvSpec(
        name=WebShopEnv.name,
        factory=WebShopEnv,
        options_cls=WebShopOptions,
        description="WebShop through HTTP against a self-hosted official server (text mode)",
    )
)
