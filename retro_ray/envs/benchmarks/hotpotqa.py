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

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from retro_ray.envs.base import StepResult, Task, Trajectory, check_split, split_of
from retro_ray.envs.benchmark import ScriptedActorEnv
from retro_ray.envs.benchmarks import hotpotqa_reflect as reflect
from retro_ray.envs.benchmarks.hotpotqa_data import HotpotQAData, Question, load_hotpotqa
from retro_ray.envs.benchmarks.hotpotqa_reading import (
    ACTION_HELP,
    FALLBACK_ANSWERS,
    MAX_ENTITY_SEARCHES,
    MAX_OWN_SEARCHES,
    SUBJECT_END,
    Advice,
    QuestionView,
    answer_f1,
    best_options,
    capitalised_spans,
    judge_yes_no,
    match_title,
    normalize_answer,
    ranked_candidates,
    read_advice,
    read_question,
    read_texts,
    searched_queries,
    similar_titles,
    similarity,
    stems,
    without_possessive,
)
from retro_ray.envs.builtin.common import EPISODE_OVER, STEP_LIMIT_NOTE, Outcome, bracket_action
from retro_ray.envs.registry import EnvSpec, register

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


class HotpotQAEnv(ScriptedActorEnv):
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
            ranked = sorted(self.pages, key=lambda t: -similarity(query, t))
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

    # ---- the scripted actor ----------------------------------------------------------------------

    def scripted_action(self, reflections: Sequence[str], rng: random.Random) -> str:
        """A ReAct-like reader that does what the reflections say. In order:

        1. give the answer a reflection states, at once: the reflection did the reading, and a
           one-step trial is the clearest demonstration of acting on it (searching the pages it
           names first would only lengthen the lesson and risk the step limit);
        2. search the pages a reflection names that this trial has not searched yet;
        3. search by itself, at most ``MAX_OWN_SEARCHES`` times: the question's entities, a
           listed similar title after a miss, then one hop to a name read that shares the
           question's words;
        4. Finish with the best candidate read (``_best_answer``), never one a reflection ruled
           out. The last step of the limit is always a Finish.

        It reads only the question, this trial's log and the reflections, never the gold answer
        or the supporting titles."""
        assert self.question is not None
        advice = read_advice(reflections)
        if advice.answer is not None:
            return f"Finish[{advice.answer}]"
        view = read_question(self.question.question)
        if len(self.log) + 1 < self.max_steps:
            query = self._next_search(view, advice)
            if query is not None:
                return f"Search[{query}]"
        return f"Finish[{self._best_answer(view, advice, rng)}]"

    def _searched(self) -> list[str]:
        return searched_queries(action for action, _ in self.log)

    def _next_search(self, view: QuestionView, advice: Advice) -> str | None:
        """The advised pages first, then the actor's own queries; None: time to answer."""
        searched = self._searched()
        done = {normalize_answer(q) for q in searched}
        if len(searched) >= len(advice.pages) + MAX_OWN_SEARCHES:
            return None
        queries = [*advice.pages, *self._own_queries(view, searched)]
        return next(
            (q for q in queries if normalize_answer(q) and normalize_answer(q) not in done), None
        )

    def _own_queries(self, view: QuestionView, searched: Sequence[str]) -> list[str]:
        """What a ReAct agent would search next, best first: after a miss, a listed title that
        shares a word with the missed query; the question's first entities; then names read
        that share the question's words (the hop), most shared first, but not a page's own name
        (what its first sentence says before "is"), which would only open the same page again."""
        retry: list[str] = []
        if self.log and (titles := similar_titles(self.log[-1][1])):
            missed = set(normalize_answer(searched[-1]).split()) if searched else set()
            retry = [t for t in titles if missed & set(normalize_answer(t).split())]
        hops: list[tuple[int, int, int, str]] = []
        for index, text in enumerate(read_texts(self.log)):
            subject = SUBJECT_END.search(text)
            for offset, span in capitalised_spans(text):
                name = without_possessive(span)
                if subject and offset < subject.start():
                    continue  # the page's own name or alias: nowhere new to go
                shared = len(view.stems & stems(name))
                if shared and not set(normalize_answer(name).split()) <= view.words:
                    hops.append((-shared, index, offset, name))
        return [*retry, *view.entities[:MAX_ENTITY_SEARCHES], *(hop[-1] for hop in sorted(hops))]

    def _best_answer(self, view: QuestionView, advice: Advice, rng: random.Random) -> str:
        """Yes or no for a yes/no question, one of the alternatives for a choice question, each
        judged from the pages read (``judge_yes_no``, ``best_options``); otherwise the
        best-ranked candidate of the kind wanted (a date, a year, a count, a name) in what the
        trial read, then any name read; last, an entity of the question or a stock answer, so
        that the Finish is always well formed and never a ruled-out answer. ``rng`` breaks the
        ties the text leaves."""
        ruled_out = advice.ruled_out
        pages = self._pages_by_query()
        if view.kind == "yes_no" and (open_ := [a for a in ("yes", "no") if a not in ruled_out]):
            verdict = judge_yes_no(view, pages) if len(open_) == 2 else None
            return verdict or rng.choice(open_)
        if view.kind == "choice":
            open_ = [o for o in view.options if normalize_answer(o) not in ruled_out]
            if open_:
                return rng.choice(best_options(view, open_, pages))
        texts = read_texts(self.log)
        for kind in dict.fromkeys([view.kind, "name"]):
            if kind in ("yes_no", "choice"):
                continue
            if ranked := ranked_candidates(texts, view, kind, ruled_out):
                return rng.choice(ranked[0])
        last_resort = [*view.entities, *FALLBACK_ANSWERS]
        open_ = [a for a in last_resort if normalize_answer(a) not in ruled_out]
        return open_[0] if open_ else f"{FALLBACK_ANSWERS[0]} {len(ruled_out)}"

    def _pages_by_query(self) -> dict[str, str]:
        """The text each successful Search of this trial showed, by its normalised query."""
        pages: dict[str, str] = {}
        for action, observation in self.log:
            parsed = bracket_action(action)
            if parsed and parsed[0] == "search" and (text := read_texts([(action, observation)])):
                pages.setdefault(normalize_answer(parsed[1]), text[0])
        return pages

    # ---- reflectors (hotpotqa_reflect) ------------------------------------------------------

    def trajectory_oracle(self, trajectory: Trajectory, memory: Sequence[str]) -> str:
        return reflect.trajectory_oracle(self._by_id[trajectory.task.task_id], trajectory, memory)

    def ground_truth_reflection(self, task: Task) -> str:
        return reflect.ground_truth_reflection(self._by_id[task.task_id])

    def misleading_reflection(self, trajectory: Trajectory, rng: random.Random) -> str:
        return reflect.misleading_reflection(self._by_id[trajectory.task.task_id], trajectory, rng)


register(
    EnvSpec(
        name=HotpotQAEnv.name,
        factory=HotpotQAEnv,
        options_cls=HotpotQAOptions,
        description="HotPotQA multi-hop questions, ReAct tools over the 10 context paragraphs",
    )
)
