"""What the HotPotQA scripted actor reads: the question, its own actions and observations of a
trial, and the reflections, turned into the few facts its rules need (the question's entities and
kind of answer, the advice a reflection carries, the answer candidates in what it read).

Text only: nothing here sees the gold answer or the supporting titles, so the policy built on it
(``HotpotQAEnv.scripted_action``) acts on what an LLM actor would see.

Also the text matching that the environment's tools, its scoring and its reflectors share:
HotPotQA's answer F1 and the title a Search opens (``answer_f1``, ``match_title``).
"""

from __future__ import annotations

import ast
import difflib
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from retro_ray.envs.builtin.common import STEP_LIMIT_NOTE, bracket_action

_PUNCTUATION = frozenset(string.punctuation)
WRONG_ANSWER = re.compile(r'answered "(.+?)", which was wrong')


def normalize_answer(text: str) -> str:
    """HotPotQA's official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


MAX_OWN_SEARCHES = 3
"""Searches the actor chooses by itself in one trial (pages a reflection names come on top, within
the step limit): the question's entities, a retry or one hop, as a ReAct agent reads before it
answers. More would read most of the docstore and leave the reflections little to add."""
MAX_ENTITY_SEARCHES = 2
"""Entities of the question searched before hopping (both sides of a comparison)."""

_STATED = re.compile(r'The answer is "(.+?)", stated in ')
_ANSWER_IS = re.compile(r'The answer is "(.+?)"')
_EARLIER = re.compile(r"Earlier wrong answers: (.+?)\.(?= I read | Pages I saw | \d+ action|\s*$)")
_UNOPENED = re.compile(r"never opened: (.+?)(?:; search them|$)")  # $: a reflection cut short
_SIMILAR = re.compile(r"^Could not find .*\. Similar: (\[.*\])\.$")
_RESULT = re.compile(r"^\(Result \d+ / \d+\) ")
_QUOTED = re.compile(r'"\s*([^"]+?)\s*"')
_WORD = re.compile(r"\w+(?:['’&.-]\w+)*\.?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SUBJECT_END = re.compile(r"\b(?:is|was|are|were)\b")
_EARLIER_CUE = re.compile(r"\b(?:first|older|oldest|earlier|earliest)\b", re.IGNORECASE)
_LATER_CUE = re.compile(
    r"\b(?:recent|recently|younger|youngest|later|latest|newer|newest)\b", re.IGNORECASE
)
_DEMONYM = re.compile(r"\b[A-Z][a-z]+(?:an|ish|ese|ch)\b")
_YEAR = re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2})\b")
_NUMBER = re.compile(r"\b\d+(?:,\d{3})*(?:\.\d+)?\b")
_MONTHS = tuple(
    """January February March April May June July August September October November
    December""".split()  # noqa: SIM905
)
_DATE = re.compile(
    rf"\b(?:\d{{1,2}} )?(?:{'|'.join(_MONTHS)})(?: \d{{1,2}},?)? (?:1[0-9]{{3}}|20[0-9]{{2}})\b"
)
_YES_NO_START = re.compile(
    r"^(?:are|is|was|were|do|does|did|can|could|has|have|had|will|would|should)\b", re.IGNORECASE
)
_OR = re.compile(r",? or ")
_AND_CHOICE = re.compile(r"\b(?:(?:which|who|what) of|between)\b", re.IGNORECASE)
_JOINERS = frozenset({"of", "of the", "de", "du", "da", "von", "van", "del", "la", "le"})
_PARTICLES = frozenset(
    {*_JOINERS, "the", "and", "to", "in", "on", "for", "at", "a", "an", "v.", "vs.", "&"}
)
FUNCTION_WORDS = frozenset(
    """a an the of in on at to for from by with and or but as is are was were be been being
        has have had do does did which what who whom whose where when why how that this these
        those it its he she his her they their them both either than then also not no one after
        before during into about over under between while although however since there here if
        so such""".split()  # noqa: SIM905 (a word list reads best as text)
)
"""Words that carry no name or topic: trimmed off spans, left out of the question's words."""
FALLBACK_ANSWERS = ("unknown", "none", "no answer")
"""Answers of last resort, for a trial that read nothing usable and had the rest ruled out."""
LIST_SEP = " | "
"""Between the titles or answers a reflection lists. They hold commas ("Brown County, Kansas"),
" and " and even semicolons (the "&amp;" of raw titles), never this, so a list reads back whole."""

AnswerKind = Literal["yes_no", "choice", "date", "year", "number", "name"]


def stems(text: str) -> frozenset[str]:
    """Content words cut to five letters, so "disbanded" meets "disband": a crude match of a
    sentence to the question's words."""
    words = normalize_answer(text).split()
    return frozenset(w[:5] for w in words if len(w) > 2 and w not in FUNCTION_WORDS)


def capitalised_spans(text: str) -> list[tuple[int, str]]:
    """(offset, span) of each run of capitalised words ("Kiss and Tell" is two runs, "University of
    Idaho" one: "of" and a few other particles join), without function words at either end ("The",
    "Which") and cut at a sentence's end. Works on any script's capitals (``str.isupper``)."""
    words = list(_WORD.finditer(text))
    spans: list[tuple[int, str]] = []
    i = 0
    while i < len(words):
        if not words[i].group()[0].isupper():
            i += 1
            continue
        last, j = i, i
        while not _ends_sentence(words[j].group()) and j + 1 < len(words):
            if text[words[j].end() : words[j + 1].start()] != " ":
                break
            nxt = words[j + 1].group()
            joined = " ".join(w.group().lower() for w in words[last + 1 : j + 2])
            if nxt[0].isupper() or nxt[0].isdigit():
                last = j = j + 1
            elif joined in _JOINERS:
                j += 1
            else:
                break
        raw = text[words[i].start() : words[last].end()]
        span = _trim_span(raw)
        if span:
            spans.append((words[i].start() + raw.find(span), span))
        i = last + 1
    return spans


def _ends_sentence(word: str) -> bool:
    """A word ending in a full stop ends the span, unless it is an initial or "Jr.", "St."."""
    return word.endswith(".") and len(word) > 4 and not word[:-1].isupper()


def _trim_span(span: str) -> str:
    """The span without function words at either end ("The", "Which", an "In" that opens a
    sentence) or a full stop."""
    words = span.rstrip(".").split(" ")
    while words and words[0].lower().rstrip(".") in FUNCTION_WORDS:
        words.pop(0)
    while words and words[-1].lower().rstrip(".") in FUNCTION_WORDS:
        words.pop()
    return " ".join(words).strip()


def without_possessive(span: str) -> str:
    """Drop a possessive ("Creed's" -> "Creed"): what a page is called and what an answer
    names. The alternatives of a choice question keep theirs ("Papa Gino's" is a name)."""
    return re.sub(r"['’]s?$", "", span)


@dataclass(frozen=True)
class QuestionView:
    """What the question says about where to start and what kind of answer it wants."""

    text: str
    stems: frozenset[str]  # its content words (see ``_stems``)
    words: frozenset[str]  # its normalised words: a candidate made only of these is no answer
    entities: tuple[str, ...]  # what to search first: quoted titles, then capitalised spans
    options: tuple[str, ...]  # the two alternatives of "..., A or B?" / "Which of A and B ...?"
    kind: AnswerKind


@lru_cache(maxsize=1024)
def read_question(question: str) -> QuestionView:
    """The question's entities, alternatives and answer kind, by the cues a reader would use."""
    text = question.strip()
    quoted = [q for q in _QUOTED.findall(text) if normalize_answer(q)]
    spans = [without_possessive(s) for _, s in capitalised_spans(text)]
    spans = [s for s in spans if normalize_answer(s)]
    spans.sort(key=lambda s: -len(s))  # stable: the longest first, ties in question order
    options = choice_options(text)
    entities = tuple(dict.fromkeys([*options, *quoted, *spans])) or key_phrase(text)
    return QuestionView(
        text=text,
        stems=stems(text),
        words=frozenset(normalize_answer(text).split()),
        entities=entities,
        options=options,
        kind=answer_kind(text, options),
    )


def key_phrase(question: str) -> tuple[str, ...]:
    """For a question that names nothing: its longest run of content words (at most five), what
    a reader would type into the search box ("science fantasy young adult series")."""
    runs: list[list[str]] = [[]]
    for word in normalize_answer(question).split():
        if word in FUNCTION_WORDS:
            runs.append([])
        else:
            runs[-1].append(word)
    best = max(runs, key=len)[:5]
    return (" ".join(best),) if best else ()


def choice_options(question: str) -> tuple[str, ...]:
    """The alternatives of a choice question, on either side of an " or " (or of the " and " of
    "which of A and B", "between A and B"): the whole text up to the comma or question mark
    when it reads as one name ("Letters to Cleo"), else the quoted or capitalised span that
    touches the connector ("Is Velvetpark or ...")."""
    units = [(m.start(), m.end(), m.group(1)) for m in _QUOTED.finditer(question)]
    for start, span in capitalised_spans(question):
        if not any(s <= start < e for s, e, _ in units):
            units.append((start, start + len(span), span))
    connectors = list(_OR.finditer(question))
    if _AND_CHOICE.search(question):
        connectors += re.finditer(" and ", question)
    for match in connectors:
        before, after = question[: match.start()], question[match.end() :]
        left = [u for _, e, u in units if 0 <= match.start() - e <= 2]
        right = [u for s, _, u in units if 0 <= s - match.end() <= 1]
        left_name = _as_name(before.rsplit(",", 1)[-1]) or (left[-1] if left else None)
        right_name = _as_name(re.split(r"[,?]", after)[0]) or (right[0] if right else None)
        if left_name and right_name and normalize_answer(left_name) != normalize_answer(right_name):
            return (left_name, right_name)
    return ()


def _as_name(chunk: str) -> str | None:
    """``chunk`` if it reads as one name: capitalised words and numbers, joined by particles
    ("Letters to Cleo", "Craig v. Boren", "712 Fifth Avenue"), not opening with a question or
    function word ("Which of Jonny Craig", "Is Velvetpark")."""
    text = chunk.strip().strip('"').strip()
    words = text.split()
    if not words or words[-1].lower() in _PARTICLES:
        return None
    if words[0].lower() in FUNCTION_WORDS - {"the", "a", "an"}:
        return None
    named = (w[0].isupper() or w[0].isdigit() or w.lower() in _PARTICLES for w in words)
    return text if (words[0][0].isupper() or words[0][0].isdigit()) and all(named) else None


def property_stems(view: QuestionView) -> frozenset[str]:
    """The question's words that are not its entities' names: what it asks about them
    ("known for animation", "both American")."""
    named = frozenset().union(*(stems(e) for e in view.entities))
    return view.stems - named


def judge_yes_no(view: QuestionView, pages: Mapping[str, str]) -> str | None:
    """Yes or no from the pages of the question's entities (None: none of them read). "The
    same" questions compare the first nationality or origin word of each page; the others ask
    whether every page says what the question asks ("both American")."""
    texts = [pages[key] for key in map(normalize_answer, view.entities) if key in pages]
    if not texts:
        return None
    if "same" in view.words:
        origins = {origin_word(t) for t in texts}
        return "yes" if len(origins) == 1 and None not in origins else "no"
    asked = property_stems(view)
    if not asked:
        return None
    return "yes" if all(asked & stems(t) for t in texts) else "no"


def origin_word(page: str) -> str | None:
    """The first nationality-like word ("American", "British", "French") after the page's own
    name (which may itself end like one: "Brian")."""
    subject = SUBJECT_END.search(page)
    match = _DEMONYM.search(page, subject.end() if subject else 0)
    return match.group() if match else None


def best_options(view: QuestionView, options: Sequence[str], pages: Mapping[str, str]) -> list[str]:
    """The alternatives their pages support best, ties kept: for "which came first / is older"
    (or "most recent / younger") the earlier (later) first year on the page; otherwise the one
    whose page shares most of what the question asks ("known for animation")."""
    texts = {o: pages.get(normalize_answer(o), "") for o in options}
    earlier, later = _EARLIER_CUE.search(view.text), _LATER_CUE.search(view.text)
    years = {o: int(m.group()) for o, t in texts.items() if (m := _YEAR.search(t))}
    if (earlier or later) and len(years) == len(options) and len(set(years.values())) > 1:
        best = min(years.values()) if earlier else max(years.values())
        return [o for o in options if years[o] == best]
    asked = property_stems(view)
    scores = {o: len(asked & stems(t)) for o, t in texts.items()}
    top = max(scores.values())
    return [o for o in options if scores[o] == top]


def answer_kind(question: str, options: tuple[str, ...]) -> AnswerKind:
    """Yes/no for "Are both ...", "Is ... ?" (unless it names alternatives), else by the
    question word: a date for "when", a year, a count, or a name."""
    words = set(normalize_answer(question).split())
    yes_no = bool(_YES_NO_START.match(question))
    if yes_no and ("both" in words or not options):
        return "yes_no"
    if options:
        return "choice"
    if "when" in words or "date" in words or "birthday" in words:
        return "date"
    if "year" in words:
        return "year"
    if re.search(r"\bhow (?:many|much)\b", question, re.IGNORECASE):
        return "number"
    return "name"


@dataclass(frozen=True)
class Advice:
    """What the reflections tell the actor, in the oracle's and the ground truth's phrasings."""

    answer: str | None  # the answer a reflection states, unless one rules it out
    ruled_out: frozenset[str]  # normalised answers a reflection calls wrong
    pages: tuple[str, ...]  # pages a reflection says to search, the latest reflection's first


def read_advice(reflections: Sequence[str]) -> Advice:
    """Reads every reflection; a later statement of the answer wins over an earlier one, and an
    answer any reflection calls wrong is never the one to give. Lists are split at ``LIST_SEP``."""
    ruled_out: set[str] = set()
    stated: list[str] = []
    pages: list[str] = []
    for text in reversed(reflections):
        stated += _STATED.findall(text) or _ANSWER_IS.findall(text)  # the first: quotes inside
        for answer in WRONG_ANSWER.findall(text):
            ruled_out.add(normalize_answer(answer))
        for listed in _EARLIER.findall(text):
            ruled_out.update(normalize_answer(a) for a in listed.split(LIST_SEP))
        for listed in _UNOPENED.findall(text):
            pages += [p.strip() for p in listed.split(LIST_SEP) if p.strip()]
    answer = next((a for a in stated if normalize_answer(a) not in ruled_out), None)
    ruled_out.discard("")
    return Advice(answer, frozenset(ruled_out), tuple(dict.fromkeys(pages)))


def read_texts(log: Sequence[tuple[str, str]]) -> list[str]:
    """The page text each Search and Lookup of the trial showed, in order (misses, refusals and
    the step-limit note left out)."""
    texts = []
    for action, observation in log:
        parsed = bracket_action(action)
        text = observation.removesuffix(f" {STEP_LIMIT_NOTE}")
        if parsed is None:
            continue
        if parsed[0] == "search" and not text.startswith(("Could not find", "Invalid action")):
            texts.append(text)
        elif parsed[0] == "lookup" and _RESULT.match(text):
            texts.append(_RESULT.sub("", text))
    return texts


def searched_queries(actions: Iterable[str]) -> list[str]:
    """The arguments of the Search actions among ``actions``, in order."""
    return [p[1] for a in actions if (p := bracket_action(a)) is not None and p[0] == "search"]


def similar_titles(observation: str) -> list[str]:
    """The titles a missed Search listed as similar."""
    match = _SIMILAR.match(observation.removesuffix(f" {STEP_LIMIT_NOTE}"))
    if match is None:
        return []
    try:
        titles = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return []
    return [t for t in titles if isinstance(t, str)]


def _extract(sentence: str, kind: AnswerKind) -> list[str]:
    """The answer-shaped pieces of a sentence for the kind of answer wanted."""
    if kind == "date":
        return _DATE.findall(sentence) or _YEAR.findall(sentence)
    if kind == "year":
        return _YEAR.findall(sentence)
    if kind == "number":
        return _NUMBER.findall(sentence)
    spans = [without_possessive(s) for _, s in capitalised_spans(sentence)]
    return [s for s in spans if s not in _MONTHS]


def ranked_candidates(
    texts: Sequence[str], view: QuestionView, kind: AnswerKind, ruled_out: frozenset[str]
) -> list[list[str]]:
    """Answer candidates from what the trial read, best first, grouped into ties: the more
    question words its sentence shares, the better; then the later read (the last hop is
    where a multi-hop answer sits); within a tie, in reading order. A candidate made only of
    the question's own words is no answer, nor is one a reflection ruled out."""
    asked = property_stems(view)
    best: dict[str, tuple[int, int]] = {}
    surface: dict[str, str] = {}
    for index, text in enumerate(texts):
        for sentence in _SENTENCE_END.split(text):
            words = stems(sentence)
            overlap = 2 * len(asked & words) + len(view.stems & words)
            for candidate in _extract(sentence, kind):
                key = normalize_answer(candidate)
                if not key or key in ruled_out or set(key.split()) <= view.words:
                    continue
                score = (overlap, index)
                if key not in best or score > best[key]:
                    best[key] = score
                surface.setdefault(key, candidate)
    groups: dict[tuple[int, int], list[str]] = {}
    for key, score in best.items():
        groups.setdefault(score, []).append(surface[key])
    return [groups[score] for score in sorted(groups, reverse=True)]


ACTION_HELP = "Use Search[entity], Lookup[keyword] or Finish[answer]."
FUZZY_MIN = 0.75
"""Similarity a title needs to be opened by a fuzzy Search (between 0 and 1)."""


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


def similarity(query: str, title: str) -> float:
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
    ranked = sorted(((similarity(query, t), t) for t in titles), reverse=True)
    if ranked and ranked[0][0] >= FUZZY_MIN and (len(ranked) == 1 or ranked[1][0] < ranked[0][0]):
        return ranked[0][1]
    return None
