"""Memoization of TextWorld's pure, repeated work in ALFWorld games; the same text, less CPU.

Profiled on the evaluation games (``valid_unseen``), a trial of ALFWorld spends its CPU on work
that TextWorld redoes with identical inputs:

* **Each reset translates the game's PDDL twice** with fast-downward (``pddl2sas``, once plain and
  once optimized for the replanner), and loading a game builds one more state first: 2 + 2 x
  trials translations of the same problem, about 1 s each on 2 cores.
* **Each step parses grammar templates** with tatsu: the feedback and one command template per
  admissible action (dozens a step), and the condition of every rule tried, each parsed anew
  from the same few hundred strings.

:func:`install` caches the translations and the parsed templates and conditions, and replaces
TextWorld's deep copy of a derivation's context with a shallow one. Parsed templates are copied on
the way out (TextWorld attaches a context to each symbol it derives); conditions are returned as
they are (TextWorld only reads them); translations are kept for the last 64 games, or for as many
as there are TextWorld engines to play them (they are large), which spares every reset after a
game's first load. Observations, admissible commands and rewards are unchanged:
``tests/test_alfworld.py`` plays games with and without the caches and compares every
observation.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

TRANSLATIONS_KEPT = 64
"""Games whose fast-downward translations stay cached at least (more when more TextWorld engines
are in play at once: ``keep_games``), least recently used dropped first. A
game's two translations hold about 1.5 MB (pickled; 8 MB traced for two games with their engine
state): 64 games cost a process 100 to 250 MB, and cover the games an evaluation plays at once,
each under several agents."""

_LOCK = threading.Lock()
_ORIGINALS: dict[str, Callable[..., Any]] = {}
_games_kept = TRANSLATIONS_KEPT


def keep_games(games: int) -> None:
    """Keep the translations of at least ``games`` games: the environment calls this with the
    number of TextWorld engines it has made, the games that can be in play at once. With fewer
    kept, an evaluation of 3 agents x 32 tasks in flight evicted every game between two of its
    trials and translated it again on each reset (92% of the CPU in a profile)."""
    global _games_kept
    with _LOCK:
        _games_kept = max(_games_kept, games)


def _cached_templates(parse: Callable[..., Any]) -> Callable[..., Any]:
    cache: dict[tuple, Any] = {}

    @functools.wraps(parse)
    def parse_template(*args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = parse(*args, **kwargs)
        return copy.deepcopy(cache[key])

    return parse_template


def _cached_translation(pddl2sas: Callable[..., Any]) -> Callable[..., Any]:
    cache: OrderedDict[tuple, Any] = OrderedDict()

    @functools.wraps(pddl2sas)
    def translate(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
        key = (domain, problem, bool(optimize))
        with _LOCK:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        result = pddl2sas(domain, problem, verbose=verbose, optimize=optimize)
        with _LOCK:
            cache[key] = result
            while len(cache) > 2 * _games_kept:  # two translations a game
                cache.popitem(last=False)
        return result

    return translate


def _copy_context(context: dict[str, Any]) -> dict[str, Any]:
    """TextWorld's ``copy_context`` with shallow copies of the two dicts it deep-copies: derivation
    adds keys to a copy's ``variables`` and ``mapping`` but never changes the entities and
    variables they hold, so copying the dicts is enough (and most of a step's CPU was this copy)."""
    return {
        "state": context["state"],
        "facts": context["facts"],
        "variables": dict(context["variables"]),
        "mapping": dict(context["mapping"]),
        "entity_infos": context["entity_infos"],
    }


def install() -> None:
    """Put the caches in place (idempotent). Needs the ``alfworld`` extra (TextWorld)."""
    import fast_downward
    import textworld.envs.pddl.textgen as textgen
    from textworld.logic import Rule

    with _LOCK:
        if _ORIGINALS:
            return
        _ORIGINALS["templates"] = textgen._parse_and_convert
        _ORIGINALS["condition"] = Rule.__dict__["parse_conjunctive_query"]
        _ORIGINALS["pddl2sas"] = fast_downward.pddl2sas
        _ORIGINALS["copy_context"] = textgen.copy_context
    textgen.copy_context = _copy_context
    textgen._parse_and_convert = _cached_templates(textgen._parse_and_convert)
    Rule.parse_conjunctive_query = classmethod(  # type: ignore[assignment]
        functools.lru_cache(maxsize=None)(Rule.parse_conjunctive_query.__func__)
    )
    fast_downward.pddl2sas = _cached_translation(fast_downward.pddl2sas)


def uninstall() -> None:
    """Restore TextWorld's own functions (for the equivalence test)."""
    import fast_downward
    import textworld.envs.pddl.textgen as textgen
    from textworld.logic import Rule

    with _LOCK:
        if not _ORIGINALS:
            return
        textgen._parse_and_convert = _ORIGINALS.pop("templates")
        Rule.parse_conjunctive_query = _ORIGINALS.pop("condition")  # type: ignore[method-assign]
        fast_downward.pddl2sas = _ORIGINALS.pop("pddl2sas")
        textgen.copy_context = _ORIGINALS.pop("copy_context")


def installed() -> bool:
    return bool(_ORIGINALS)
