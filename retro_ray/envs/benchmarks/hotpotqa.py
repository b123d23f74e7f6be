"""``hotpotqa``: multi-hop questions answered with ReAct's Wikipedia tools over a local docstore.

No Wikipedia: the docstore of a question is its 10 context paragraphs (HotPotQA's distractor
setting: the 2 that hold the supporting facts and 8 distractors), so runs are offline and
reproducible. The tools behave as ReAct's Wikipedia tool does:

* ``Search[entity]`` opens the page whose title matches (exactly, else by a close fuzzy match) and
  shows its first sentences; on a miss it says so and lists the most similar titles.
* ``Lookup[keyword]`` shows the next sentence of the open page holding the keyword, with
  ``(Result i / n)``, so repeating it walks through all of them.
* ``Finish[answer]`` ends the episode. Success is exact match after HotPotQA's official answer
  normalisation; the shaped return (``score``) is the official token F1.

Data and splits: see ``hotpotqa_data`` (the Reflexion 100-question file is all ``test``).
"""

from __future__ import annotations

import difflib
import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from retro_ray.envs.base import StepResult, Task, Trajectory, check_split, split_of
from retro_ray.envs.benchmark import BenchmarkEnv
from retro_ray.envs.benchmarks.hotpotqa_data import HotpotQAData, Question, load_hotpotqa
from retro_ray.envs.builtin.common import EPISODE_OVER, STEP_LIMIT_NOTE, Outcome, bracket_action
from retro_ray.envs.registry import EnvSpec, register

ACTION_HELP = "Use Search[entity], Lookup[keyword] or Finish[answer]."
FUZZY_MIN = 0.75
"""Similarity a title needs to be opened by a fuzzy Search (between 0 and 1)."""
_PUNCTUATION = frozenset(string.punctuation)
_WRONG = re.compile(r'answered "(.+?)", which was wrong')
_CAPITALISED = re.compile(r"\b[A-Z][\w'-]*(?: [A-Z][\w'-]*)*")


@dataclass(frozen=True)
class HotpotQAOptions:
    max_steps: int = 7
    """Step limit of one trial (Reflexion gives its HotPotQA ReAct agent about as many)."""
    summary_sentences: int = 3
    """Sentences a Search shows of the page, as the Wikipedia tool shows a page's summary."""
    similar_titles: int = 5
    """Titles listed after a missed Search."""
    split_rule: Literal["auto", "hash", "test"] = "auto"
    """``auto``: the data file's own rule (the Reflexion file is all test, other files are split by
    a hash of the question id); ``hash`` or ``test`` force one rule for any file."""

    def validate(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.summary_sentences < 1:
            raise ValueError(f"summary_sentences must be >= 1, got {self.summary_sentences}")
        if self.similar_titles < 0:
            raise ValueError(f"similar_titles must be >= 0, got {self.similar_titles}")


def normalize_answer(text: str) -> str:
    """HotPotQA's official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def answer_f1(prediction: str, truth: str) -> float:
    """HotPotQA's official token F1 (a yes/no answer scores only when it is exactly right)."""
    pred, gold = normalize_answer(prediction), normalize_answer(truth)
    if (pred in ("yes", "no", "noanswer") or gold in ("yes", "no", "noanswer")) and pred != gold:
        return 0.0
    common = Counter(pred.split()) & Counter(gold.split())
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred.split()), overlap / len(gold.split())
    return 2 * precision * recall / (precision + recall)


def _title_key(text: str) -> str:
    return normalize_answer(text)


def _similarity(query: str, title: str) -> float:
    """The better of character similarity (typos) and token overlap (extra or missing words)."""
    a, b = _title_key(query), _title_key(title)
    return max(difflib.SequenceMatcher(None, a, b).ratio(), answer_f1(a, b))


def match_title(query: str, titles: Sequence[str]) -> str | None:
    """The title a Search opens: an exact match (ignoring case, punctuation and a trailing
    "(disambiguation)" such as "(1945 film)"), else the single clearly closest title."""
    key = _title_key(query)
    for strip in (False, True):
        hits = [
            t for t in titles if _title_key(re.sub(r"\s*\(.*\)$", "", t) if strip else t) == key
        ]
        if len(hits) == 1 or (hits and not strip):
            return hits[0]
    ranked = sorted(((_similarity(query, t), t) for t in titles), reverse=True)
    if ranked and ranked[0][0] >= FUZZY_MIN and (len(ranked) == 1 or ranked[1][0] < ranked[0][0]):
        return ranked[0][1]
    return None


class HotpotQAEnv(BenchmarkEnv):
    name = "hotpotqa"
    Options = HotpotQAOptions

    def __init__(self, options: HotpotQAOptions | None = None, data_path: str | None = None):
        self.options = options or HotpotQAOptions()
        self.max_steps = self.options.max_steps
        self.data: HotpotQAData = load_hotpotqa(data_path)  # errors surface when the env is made
        self._by_id = {q.qid: q for q in self.data.questions}
        self.question: Question | None = None
        self.pages: dict[str, tuple[str, ...]] = {}
        self.open_title: str | None = None
        self.opened: list[str] = []
        self.log: list[tuple[str, str]] = []
        self._lookup: tuple[str, list[str], int] | None = None  # keyword, hits, next hit
        self.steps_taken, self.done, self.won, self.score = 0, False, False, 0.0

    # ---- tasks -----------------------------------------------------------------------------------

    def split_for(self, question: Question) -> str:
        rule = self.options.split_rule
        if rule == "test" or (rule == "auto" and self.data.fixed_split == "test"):
            return "test"
        return split_of(question.qid)

    def tasks(self, split: str, n: int, seed: int = 0) -> list[Task]:
        """The first ``n`` questions of ``split`` in file order (seed 0) or in an order shuffled
        by ``seed``; fewer when the split holds fewer."""
        check_split(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        chosen = [q for q in self.data.questions if self.split_for(q) == split]
        if n and not chosen:
            why = (
                "all its questions are test (the papers' evaluation set, or split_rule=test)"
                if self.split_for(self.data.questions[0]) == "test" and split != "test"
                else "its few questions hash into other splits"
            )
            raise ValueError(
                f"{self.data.path.name} holds no {split} questions: {why}; for {split} questions "
                "pass another file (e.g. ircot_dev_subsample.jsonl) with --data / env.data_path"
            )
        if seed:
            random.Random(seed).shuffle(chosen)
        return [Task(self.name, q.qid, split) for q in chosen[:n]]

    # ---- episode ---------------------------------------------------------------------------------

    def reset(self, task: Task) -> str:
        if task.env != self.name:
            raise ValueError(
                f"task {task.task_id!r} belongs to env {task.env!r}, not {self.name!r}"
            )
        if task.task_id not in self._by_id:
            raise ValueError(f"task {task.task_id!r} is not a question of {self.data.path}")
        self.question = self._by_id[task.task_id]
        self.pages = {p.title: p.sentences for p in self.question.paragraphs}
        self.open_title, self.opened, self.log, self._lookup = None, [], [], None
        self.steps_taken, self.done, self.won, self.score = 0, False, False, 0.0
        return f"Question: {self.question.question}"

    def step(self, action: str) -> StepResult:
        if self.question is None:
            raise RuntimeError("call reset(task) before step(action)")
        if self.done:
            return StepResult(EPISODE_OVER, 0.0, True, self._info())
        self.steps_taken += 1
        outcome = self._act(action.strip()) or Outcome(f"Invalid action. {ACTION_HELP}", 0.0)
        reward, self.score, self.won = outcome.score - self.score, outcome.score, outcome.won
        self.done = outcome.terminal
        observation, truncated = outcome.observation, False
        if not self.done and self.steps_taken >= self.max_steps:
            self.done = truncated = True
            observation = f"{observation} {STEP_LIMIT_NOTE}"
        self.log.append((action, observation))
        return StepResult(observation, reward, self.done, self._info(truncated))

    def _info(self, truncated: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {"won": self.won, "score": self.score, "steps": self.steps_taken}
        if truncated:
            info["truncated"] = True
        return info

    def _act(self, action: str) -> Outcome | None:
        parsed = bracket_action(action)
        if parsed is None or not parsed[1]:
            return None
        verb, argument = parsed
        if verb == "search":
            return Outcome(self._search(argument), 0.0)
        if verb == "lookup":
            return Outcome(self._lookup_step(argument), 0.0)
        if verb == "finish":
            assert self.question is not None
            won = any(
                normalize_answer(argument) == normalize_answer(a) for a in self.question.answers
            )
            f1 = max(answer_f1(argument, a) for a in self.question.answers)
            verdict = "correct" if won else "incorrect"
            return Outcome(f"Episode finished: the answer is {verdict}.", f1, won, terminal=True)
        return None

    def _search(self, query: str) -> str:
        title = match_title(query, list(self.pages))
        if title is None:
            ranked = sorted(self.pages, key=lambda t: -_similarity(query, t))
            return f"Could not find {query}. Similar: {ranked[: self.options.similar_titles]}."
        self.open_title, self._lookup = title, None
        if title not in self.opened:
            self.opened.append(title)
        return " ".join(self.pages[title][: self.options.summary_sentences])

    def _lookup_step(self, keyword: str) -> str:
        if self.open_title is None:
            return "No page is open: Search[entity] first, then Lookup[keyword] in it."
        if self._lookup is None or self._lookup[0] != keyword.lower():
            hits = [s for s in self.pages[self.open_title] if keyword.lower() in s.lower()]
            self._lookup = (keyword.lower(), hits, 0)
        word, hits, position = self._lookup
        if not hits:
            return f'No sentence of {self.open_title} holds "{keyword}".'
        if position >= len(hits):
            return "No more results."
        self._lookup = (word, hits, position + 1)
        return f"(Result {position + 1} / {len(hits)}) {hits[position]}"

    # ---- reference policies ----------------------------------------------------------------------

    def expert_action(self) -> str:
        """Open each supporting paragraph, then give the gold answer."""
        assert self.question is not None
        for title in self.question.supporting_titles:
            if title not in self.opened:
                return f"Search[{title}]"
        return f"Finish[{self.question.answers[0]}]"

    def random_action(self, rng: random.Random) -> str:
        assert self.question is not None
        titles = list(self.pages)
        last = self.log[-1][1] if self.log else self.question.question
        verb = rng.choice(("search", "lookup", "finish"))
        if verb == "search":
            return f"Search[{rng.choice(titles)}]"
        if verb == "lookup":
            return f"Lookup[{rng.choice(last.split() or ['the'])}]"
        seen = " ".join([self.question.question, *(obs for _, obs in self.log)])
        return f"Finish[{rng.choice(titles + _CAPITALISED.findall(seen))}]"

    # ---- reflectors ------------------------------------------------------------------------------

    def trajectory_oracle(self, trajectory: Trajectory, memory: Sequence[str]) -> str:
        """What the failed trial showed: the answer it gave (or that it ran out of steps), the
        answers earlier reflections ruled out, the pages it read, and pages named in what it
        saw but never opened, those sharing most words with the question first."""
        question = self._by_id[trajectory.task.task_id]
        titles = [p.title for p in question.paragraphs]
        read: list[str] = []
        answer, invalid = None, 0
        for step in trajectory.steps:
            parsed = bracket_action(step.action)
            verb, argument = parsed if parsed else ("", "")
            if verb == "search" and not step.observation.startswith("Could not find"):
                title = match_title(argument, titles)
                if title and title not in read:
                    read.append(title)
            elif verb == "finish":
                answer = argument
            elif step.observation.startswith("Invalid action"):
                invalid += 1
        parts = []
        if answer is not None:
            parts.append(f'I answered "{answer}", which was wrong.')
        else:
            parts.append("I ran out of steps before answering: I must Finish[answer] in time.")
        ruled_out = [a for text in memory for a in _WRONG.findall(text) if a != answer]
        if ruled_out:
            parts.append(f"Earlier wrong answers: {', '.join(dict.fromkeys(ruled_out))}.")
        if read:
            parts.append(f"I read {', '.join(read)}.")
        seen = " ".join(s.observation for s in trajectory.steps)
        words = set(normalize_answer(question.question).split())
        unread = [t for t in titles if t not in read and t in seen]
        unread.sort(key=lambda t: -len(words & set(normalize_answer(t).split())))
        if unread:
            parts.append(
                f"Pages I saw named but never opened: {', '.join(unread[:3])}; search them."
            )
        if invalid:
            parts.append(f"{invalid} action(s) were invalid. {ACTION_HELP}")
        return " ".join(parts)

    def ground_truth_reflection(self, task: Task) -> str:
        question = self._by_id[task.task_id]
        support = " and ".join(question.supporting_titles)
        gold = question.answers[0]
        return f'The answer is "{gold}", stated in {support}: search them, then Finish[{gold}].'


register(
    EnvSpec(
        name=HotpotQAEnv.name,
        factory=HotpotQAEnv,
        options_cls=HotpotQAOptions,
        description="HotPotQA multi-hop questions, ReAct tools over the 10 context paragraphs",
    )
)
