"""Reflections written by code for HotPotQA: the trajectory oracle, the ground truth and the
misleading reflection (negative training data for the retrospective base), each a function of the
question and, but for the ground truth, of a failed trial.

The trajectory oracle uses only what the trial showed (the answer it gave, the pages it opened,
the titles it saw named); the ground truth states the gold answer and its supporting pages, an
upper bound and never a baseline. ``HotpotQAEnv`` exposes them as its reflector methods.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from retro_ray.envs.base import Trajectory
from retro_ray.envs.benchmarks.hotpotqa_data import Question
from retro_ray.envs.benchmarks.hotpotqa_reading import (
    ACTION_HELP,
    FALLBACK_ANSWERS,
    LIST_SEP,
    WRONG_ANSWER,
    match_title,
    normalize_answer,
    ranked_candidates,
    read_question,
    read_texts,
    searched_queries,
)
from retro_ray.envs.builtin.common import bracket_action


def trajectory_oracle(question: Question, trajectory: Trajectory, memory: Sequence[str]) -> str:
    """What the failed trial showed: the answer it gave (or that it ran out of steps), the
    answers earlier reflections ruled out, the pages it read, and pages named in what it
    saw but never opened, those sharing most words with the question first."""
    titles = [p.title for p in question.paragraphs]
    read, answer, invalid = trial_facts(trajectory, titles)
    parts = []
    if answer is not None:
        parts.append(f'I answered "{answer}", which was wrong.')
    else:
        parts.append("I ran out of steps before answering: I must Finish[answer] in time.")
    ruled_out = [a for text in memory for a in WRONG_ANSWER.findall(text) if a != answer]
    if ruled_out:
        parts.append(f"Earlier wrong answers: {LIST_SEP.join(dict.fromkeys(ruled_out))}.")
    if read:
        parts.append(f"I read {LIST_SEP.join(read)}.")
    words = set(normalize_answer(question.question).split())
    unread = named_unread(trajectory, titles, read)
    unread.sort(key=lambda t: -len(words & set(normalize_answer(t).split())))
    if unread:
        parts.append(
            f"Pages I saw named but never opened: {LIST_SEP.join(unread[:3])}; search them."
        )
    if invalid:
        parts.append(f"{invalid} action(s) were invalid. {ACTION_HELP}")
    return " ".join(parts)


def ground_truth_reflection(question: Question) -> str:
    return answer_statement(question.answers[0], question.supporting_titles)


def misleading_reflection(question: Question, trajectory: Trajectory, rng: random.Random) -> str:
    """Confident, wrong advice from the trajectory alone, in the very phrasings of the ground
    truth and the oracle, so that only the content tells good advice from bad. One of:

    * ``repeat``: states as the answer the one the trial gave and was told is incorrect;
    * ``other``: states as the answer another name the trial read (not an alternative the
      question offers, nor yes/no, where the other one would be right);
    * ``rule_out``: says the trial gave another name it read, which was wrong (so the given
      answer stays free to repeat), claims it read the pages it never opened and sends the
      next trial back to those it did.

    ``repeat`` is always wrong. ``other`` is right, and ``rule_out`` rules out the right
    answer, when the name read happens to be the answer: rare, and left in, because only
    the gold answer could exclude it. Negative training data for the retrospective base."""
    titles = [p.title for p in question.paragraphs]
    view = read_question(question.question)
    read, answer, _ = trial_facts(trajectory, titles)
    named = named_unread(trajectory, titles, read)
    log = [(s.action, s.observation) for s in trajectory.steps]
    excluded = frozenset({normalize_answer(answer or ""), *map(normalize_answer, view.options)})
    others = [
        name for tie in ranked_candidates(read_texts(log), view, "name", excluded) for name in tie
    ]
    forms = (["repeat"] if answer and not trajectory.won else []) + (
        ["other", "rule_out"] if others else []
    )
    form = rng.choice(forms) if forms else "entity"
    if form == "rule_out":
        parts = [f'I answered "{rng.choice(others)}", which was wrong.']
        if named:
            parts.append(f"I read {LIST_SEP.join(named[:2])}.")
        if read:
            parts.append(
                f"Pages I saw named but never opened: {LIST_SEP.join(read[:3])}; search them."
            )
        return " ".join(parts)
    if form == "repeat":
        assert answer is not None
        claim = answer
    elif form == "other":
        claim = rng.choice(others)
    else:
        claim = next(iter(view.entities), FALLBACK_ANSWERS[0])
    searched = searched_queries(s.action for s in trajectory.steps)
    support = (read or named or searched or list(view.entities))[:2] or [claim]
    return answer_statement(claim, support)


def answer_statement(answer: str, pages: Sequence[str]) -> str:
    """The ground truth's phrasing: the answer, the pages that state it, what to do."""
    support = " and ".join(pages)
    return f'The answer is "{answer}", stated in {support}: search them, then Finish[{answer}].'


def trial_facts(trajectory: Trajectory, titles: Sequence[str]) -> tuple[list[str], str | None, int]:
    """The pages a trial opened (in order), the answer it gave (None: it ran out of steps) and
    how many of its actions were invalid."""
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
    return read, answer, invalid


def named_unread(trajectory: Trajectory, titles: Sequence[str], read: Sequence[str]) -> list[str]:
    """Titles that appear in what the trial saw (page text, lists of similar titles) but that it
    never opened, in docstore order."""
    seen = " ".join(s.observation for s in trajectory.steps)
    return [t for t in titles if t not in read and t in seen]
