"""HotPotQA question files: three layouts read into one record type, checked as they are read.

Supported layouts, told apart by their shape (not by the file name):

* ``reflexion``: the 100-question distractor sample published with Reflexion, the evaluation set of
  Reflexion and Retroformer. A JSON list of ``{id, question, answer, type, level,
  supporting_facts: {title[], sent_id[]}, context: {title[], sentences[][]}}``.
* ``official``: HotPotQA's own distractor files (``hotpot_dev_distractor_v1.json``). A JSON list of
  ``{_id, question, answer, supporting_facts: [[title, sent_id], ...], context: [[title,
  [sentence, ...]], ...]}``.
* ``ircot``: IRCoT's processed subsample, JSON lines of ``{question_id, question_text,
  answers_objects: [{spans: [...]}], contexts: [{title, paragraph_text, is_supporting}]}``.

Where the data comes from: ``retro-ray data fetch hotpotqa`` downloads HotPotQA's dev set in the
distractor setting (``hotpot_dev_distractor_v1.json``, 7,405 questions, official layout) from the
HotPotQA project into ``data_dir()`` (``$RETRO_RAY_CACHE/data/hotpotqa``, else
``~/.cache/retro_ray/data/hotpotqa``): that file is the default. Any other file is read with
``--data PATH`` (``env.data_path``).

Splits. The ``reflexion`` file is the papers' evaluation set, so every question in it belongs to
the ``test`` split (``fixed_split``): asking it for ``train`` questions is an error rather than a
silent leak of evaluation questions into training. The other layouts have no fixed role, so their
questions are split by a hash of the question id (``split_of``: 80% train, 10% validation, 10%
test), stable whatever subset or order is read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

OFFICIAL_DEV_FILE = "hotpot_dev_distractor_v1.json"
"""HotPotQA's dev set, distractor setting: what ``retro-ray data fetch hotpotqa`` downloads."""
REFLEXION_FILE = "reflexion_distractor_100.json"
"""The 100-question evaluation sample of Reflexion and Retroformer (all ``test``)."""
FOLDER_FILES = (OFFICIAL_DEV_FILE, REFLEXION_FILE)
"""The files looked for, in this order, when ``--data`` names a folder."""
FIXED_SPLITS = {"reflexion": "test", "official": None, "ircot": None}
"""The split every question of a layout belongs to; None: split by a hash of the question id."""


class HotpotQADataError(ValueError):
    """A data file is missing or is not one of the supported layouts; the message names the file
    and what is wrong. A ValueError, so the command line reports it as a configuration error."""


@dataclass(frozen=True)
class Paragraph:
    title: str
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class Question:
    qid: str
    question: str
    answers: tuple[str, ...]  # the first is the gold answer; any of them counts as correct
    paragraphs: tuple[Paragraph, ...]  # the distractor context: the question's whole docstore
    supporting_titles: tuple[str, ...]  # the paragraphs holding the supporting facts, in order


@dataclass(frozen=True)
class HotpotQAData:
    path: Path
    layout: str  # "reflexion" | "official" | "ircot"
    questions: tuple[Question, ...]

    @property
    def fixed_split(self) -> str | None:
        return FIXED_SPLITS[self.layout]


def data_dir() -> Path:
    """Where ``retro-ray data fetch hotpotqa`` puts the data: ``$RETRO_RAY_CACHE/data/hotpotqa``,
    else ``~/.cache/retro_ray/data/hotpotqa``."""
    if env := os.environ.get("RETRO_RAY_CACHE"):
        return Path(env).expanduser() / "data" / "hotpotqa"
    return Path.home() / ".cache" / "retro_ray" / "data" / "hotpotqa"


def default_data_path() -> Path:
    """The fetched dev set, ``data_dir()/hotpot_dev_distractor_v1.json``."""
    return data_dir() / OFFICIAL_DEV_FILE


def resolve_data_path(data_path: str | os.PathLike[str] | None) -> Path:
    """The file to read: the given file, the first of ``FOLDER_FILES`` inside a given folder, or
    the default."""
    if data_path is None:
        path = default_data_path()
        if not path.is_file():
            raise HotpotQADataError(
                f"no HotPotQA data at the default path {path}: run `retro-ray data fetch "
                "hotpotqa` (HotPotQA's dev set, distractor setting, from the HotPotQA project), "
                "or pass a question file with --data PATH (or env.data_path): an official "
                "HotPotQA distractor JSON, the Reflexion 100-question JSON or an IRCoT JSONL "
                "file (see docs/benchmarks.md)"
            )
        return path
    path = Path(data_path).expanduser()
    if path.is_dir():
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise HotpotQADataError(
            f"{path} is a folder without {' or '.join(FOLDER_FILES)}; name the file itself"
        )
    if not path.is_file():
        raise HotpotQADataError(f"HotPotQA data file {path} does not exist")
    return path


def load_hotpotqa(data_path: str | os.PathLike[str] | None = None) -> HotpotQAData:
    """Read and check a question file (cached per file version: every task builds an env)."""
    path = resolve_data_path(data_path).resolve()
    stat = path.stat()
    return _load(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int, size: int) -> HotpotQAData:
    text = path.read_text(encoding="utf-8")
    records, layout = _parse(path, text)
    if not records:
        raise HotpotQADataError(f"{path}: holds no questions")
    read = {"reflexion": _reflexion, "official": _official, "ircot": _ircot}[layout]
    questions: list[Question] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        where = f"{path}: question {index}"
        if not isinstance(record, dict):
            raise HotpotQADataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        try:
            question = read(record, index)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise HotpotQADataError(f"{where} ({layout} layout): {_reason(exc)}") from None
        if question.qid in seen:  # keep ids unique: they key the splits and the results log
            question = replace(question, qid=f"{question.qid}-{index}")
        seen.add(question.qid)
        questions.append(question)
    return HotpotQAData(path, layout, tuple(questions))


def _parse(path: Path, text: str) -> tuple[list[Any], str]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HotpotQADataError(f"{path}: not valid JSON ({exc})") from None
        if not records:
            raise HotpotQADataError(f"{path}: holds no questions")
        first = records[0]
        context = first.get("context") if isinstance(first, dict) else None
        if isinstance(context, dict):
            return records, "reflexion"
        if isinstance(context, list):
            return records, "official"
        raise HotpotQADataError(
            f"{path}: a JSON list whose first record has no 'context' object or list; expected "
            "the Reflexion sample or an official HotPotQA distractor file"
        )
    if stripped.startswith("{"):
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise HotpotQADataError(
                    f"{path}: line {number} is not a JSON object ({exc}); expected JSON lines "
                    "(IRCoT) or a JSON list of questions"
                ) from None
        return records, "ircot"
    raise HotpotQADataError(
        f"{path}: neither a JSON list of questions nor JSON lines (it starts with "
        f"{stripped[:20]!r})"
    )


def _reflexion(record: dict[str, Any], index: int) -> Question:
    context = record["context"]
    titles, bodies = _strings(context["title"], "context.title"), context["sentences"]
    if len(titles) != len(bodies):
        raise ValueError(f"context has {len(titles)} titles but {len(bodies)} sentence lists")
    paragraphs = [
        Paragraph(t, _sentences(b, f"context.sentences of {t!r}"))
        for t, b in zip(titles, bodies, strict=True)
    ]
    support = _strings(record["supporting_facts"]["title"], "supporting_facts.title")
    qid = str(record.get("id") or record.get("_id") or f"hotpotqa-{index}")
    return _question(qid, record["question"], [record["answer"]], paragraphs, support)


def _official(record: dict[str, Any], index: int) -> Question:
    paragraphs = []
    for entry in record["context"]:
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ValueError("each context entry must be [title, [sentence, ...]]")
        title, body = entry
        paragraphs.append(Paragraph(str(title), _sentences(body, f"context of {title!r}")))
    facts = record["supporting_facts"]
    if not all(isinstance(f, list) and len(f) == 2 for f in facts):
        raise ValueError("supporting_facts must be a list of [title, sentence index] pairs")
    support = [str(fact[0]) for fact in facts]
    qid = str(record.get("_id") or record.get("id") or f"hotpotqa-{index}")
    return _question(qid, record["question"], [record["answer"]], paragraphs, support)


def _ircot(record: dict[str, Any], index: int) -> Question:
    answers = [span for obj in record["answers_objects"] for span in obj["spans"]]
    paragraphs, support = [], []
    for context in record["contexts"]:
        title = str(context["title"])
        paragraphs.append(Paragraph(title, split_sentences(str(context["paragraph_text"]))))
        if context.get("is_supporting"):
            support.append(title)
    qid = str(record.get("question_id") or f"hotpotqa-{index}")
    return _question(qid, record["question_text"], answers, paragraphs, support)


def _question(
    qid: str, text: Any, answers: list[Any], paragraphs: list[Paragraph], support: list[str]
) -> Question:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the question text is missing or empty")
    answers = [str(a).strip() for a in answers if str(a).strip()]
    if not answers:
        raise ValueError("no answer")
    merged: dict[str, list[str]] = {}  # a title listed twice becomes one page
    for paragraph in paragraphs:
        merged.setdefault(paragraph.title, []).extend(paragraph.sentences)
    if not merged:
        raise ValueError("no context paragraphs")
    missing = [t for t in support if t not in merged]
    if missing:
        raise ValueError(f"supporting title {missing[0]!r} is not among the context paragraphs")
    pages = tuple(Paragraph(t, tuple(s)) for t, s in merged.items())
    return Question(qid, text.strip(), tuple(answers), pages, tuple(dict.fromkeys(support)))


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return value


def _sentences(value: Any, what: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in _strings(value, what) if s.strip())


_JOINED = re.compile(r"(?<=\S)\s{2,}(?=\S)")  # IRCoT joins a paragraph's sentences by two spaces
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def split_sentences(text: str) -> tuple[str, ...]:
    """A paragraph's sentences: by IRCoT's double-space joins where present, else by full stops."""
    parts = _JOINED.split(text.strip()) if _JOINED.search(text) else _SENTENCE_END.split(text)
    return tuple(p.strip() for p in parts if p.strip())


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}"
    return str(exc) or type(exc).__name__
