"""The import graph of ``retro_ray`` points down (issue 16 item 4).

Read statically: every module under ``retro_ray/`` is parsed with ``ast`` and every ``import`` and
``from ... import`` in it counts, at any depth: inside functions (a lazy import is still a
dependency, it runs the moment the function does) and inside ``if TYPE_CHECKING:`` blocks (a type
named there is a dependency of the design even though it never runs; no exemption is needed, so
none is made). Relative imports are resolved, and ``from retro_ray.pkg import name`` counts as an
import of ``retro_ray.pkg.name`` when that is a module.

A *layer* is the first component under ``retro_ray``: a package (``algo``, ``config``...) or a
top-level module (``cli``, ``aio``...). ``LAYERS`` below names every one of them, bottom to top,
and every import must point to a lower rank (commands may also import commands). That implies no
cycle; the cycle test is kept for its clearer message when a change adds one. The other tests
state the rules the issue names (pure ``algo``; serving without the agent loop; rollout and
learner apart) on their own, so that their failure says which rule broke.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "retro_ray"

LEAF_UTILITIES = ("aio", "durable", "safe_text", "stopping", "ray_cluster")
"""Top-level helpers every layer may use (event-loop helpers, durable writes, text cleaning,
SIGTERM handling, joining Ray): they import nothing of retro_ray."""

APPLICATION = (
    "cli",
    "demo",
    "registry_cli",
    "data_fetch",
    "env_cli",
    "train_eval_cli",
    "report_cli",
    "zoo_cli",
    "data_cli",
)
"""Top-level modules that are commands: the top layer. They may import any layer, and each
other; nothing else imports them."""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("algo", *LEAF_UTILITIES),  # pure math (torch and the standard library); leaf utilities
    ("registry",),  # adapter versions and aliases: the learner publishes, serving loads
    ("config",),  # the configuration tree, each section checking itself
    ("llm",),  # LLM clients and engines
    ("envs",),  # environments and their registry
    # run_config: the loader above config and envs (checks env.name and env.options);
    # reflection: the reflection prompt and reflection groups (plain data), which agents,
    # rollout, learner, zoo and serving share
    ("run_config", "reflection"),
    ("agents",),  # actors, reflectors, the trial loop
    ("rollout", "learner"),  # collection and its branching rule | group-to-batch and the update
    ("evaluation",),  # conditions, playing them, the table
    ("report", "zoo"),  # retro-ray report; the model zoo (builds, evaluates tiny models)
    ("rl",),  # the RL baseline: token/Discrete wrapper, RLlib PPO (tokenizer from the zoo)
    ("serve",),  # the Serve app (builds the zoo's model when none is configured)
    ("driver",),  # the training loop and the promotion gate
    APPLICATION,
)
"""Every layer of retro_ray, bottom to top; a new package or top-level module goes here."""

RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

ALGO_ALLOWED_THIRD_PARTY = {"torch"}
"""Besides the standard library, all that ``retro_ray/algo`` may import."""


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module (or module attribute), dotted
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(source: str, text: str, is_package: bool, known: Iterable[str]) -> list[Import]:
    """Every import statement of one module, at any depth, as absolute dotted targets."""
    modules = set(known)
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [Import(source, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(source, node, is_package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in modules else base
                found.append(Import(source, target, node.lineno))
    return found


def _from_base(source: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = source.split(".") if is_package else source.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def graph() -> list[Import]:
    modules = all_modules()
    edges = []
    for name, path in modules.items():
        edges += imports_of(name, path.read_text(), path.name == "__init__.py", modules)
    return edges


def layer(module: str) -> str | None:
    """``algo`` for ``retro_ray.algo.losses``, ``cli`` for ``retro_ray.cli``; None outside."""
    parts = module.split(".")
    if parts[0] != "retro_ray" or len(parts) < 2:
        return None
    return parts[1]


def internal_edges() -> list[Import]:
    """Imports from one layer of retro_ray into another."""
    return [
        e for e in graph() if layer(e.target) is not None and layer(e.source) != layer(e.target)
    ]


def cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    succ: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
        succ.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(succ[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(succ):
        if node not in index:
            visit(node)
    return found


def _listing(edges: Iterable[Import]) -> str:
    return "\n".join(f"  {line}" for line in sorted({str(e) for e in edges}))


# --- the reader itself ------------------------------------------------------------------------


def test_the_reader_sees_lazy_relative_and_type_only_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "if TYPE_CHECKING:\n"
        "    from retro_ray.config import Config\n"
        "def f():\n"
        "    import retro_ray.serve.app\n"
        "    from retro_ray.llm import base\n"
    )
    known = {"retro_ray.pkg.sibling", "retro_ray.llm.base"}
    targets = {i.target for i in imports_of("retro_ray.pkg.mod", source, False, known)}
    assert targets == {
        "typing",
        "retro_ray.pkg.sibling",
        "retro_ray.other",
        "retro_ray.config",
        "retro_ray.serve.app",
        "retro_ray.llm.base",
    }
    assert {i.target for i in imports_of("retro_ray.pkg", "from . import x\n", True, ())} == {
        "retro_ray.pkg"
    }


def test_the_cycle_finder() -> None:
    assert cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]
    assert cycles([("a", "b"), ("b", "c")]) == []


# --- the rules --------------------------------------------------------------------------------


def test_every_layer_is_classified() -> None:
    """A new package or top-level module must be placed in ``LAYERS``, once."""
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    top_level = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert packages | top_level == set(RANK)
    assert sum(len(names) for names in LAYERS) == len(RANK)


def test_imports_point_down() -> None:
    bad = [
        e
        for e in internal_edges()
        if RANK[layer(e.source)] <= RANK[layer(e.target)]  # type: ignore[index]
        and not (layer(e.source) in APPLICATION and layer(e.target) in APPLICATION)
    ]
    assert not bad, "imports that do not point to a lower layer (see LAYERS):\n" + _listing(bad)


def test_algo_imports_only_algo_the_standard_library_and_torch() -> None:
    """The pure math must stay pure: no config, no Ray, no transformers."""
    bad = [
        e
        for e in graph()
        if layer(e.source) == "algo"
        and layer(e.target) != "algo"
        and e.target.split(".")[0] not in sys.stdlib_module_names | ALGO_ALLOWED_THIRD_PARTY
    ]
    assert not bad, "retro_ray/algo imports outside algo, the standard library and torch:\n" + (
        _listing(bad)
    )


def test_no_cycle_among_the_layers() -> None:
    edges = internal_edges()
    found = cycles((layer(e.source), layer(e.target)) for e in edges)  # type: ignore[misc]
    if found:
        inside = [
            e for e in edges if any(layer(e.source) in c and layer(e.target) in c for c in found)
        ]
        pytest.fail(
            f"import cycles among the layers: {found}; the imports inside them:\n"
            + (_listing(inside))
        )


def test_serving_imports_neither_the_agent_loop_nor_the_driver() -> None:
    """Serving answers requests: no agent loop, no driver, no evaluation, no rollouts."""
    forbidden = {"agents", "driver", "evaluation", "rollout"}
    bad = [
        e for e in internal_edges() if layer(e.source) == "serve" and layer(e.target) in forbidden
    ]
    assert not bad, "retro_ray/serve imports a layer above it:\n" + _listing(bad)


def test_rollout_and_learner_do_not_import_each_other() -> None:
    """Branching belongs to rollout, group-to-batch to learner; what both read lives below."""
    pair = {"rollout", "learner"}
    bad = [e for e in internal_edges() if {layer(e.source), layer(e.target)} == pair]
    assert not bad, "rollout and learner import each other:\n" + _listing(bad)


def test_only_commands_import_commands() -> None:
    bad = [
        e
        for e in internal_edges()
        if layer(e.target) in APPLICATION and layer(e.source) not in APPLICATION
    ]
    assert not bad, "a library layer imports a command module:\n" + _listing(bad)


def test_leaf_utilities_import_nothing_of_retro_ray() -> None:
    bad = [e for e in internal_edges() if layer(e.source) in LEAF_UTILITIES]
    assert not bad, "a leaf utility imports retro_ray:\n" + _listing(bad)
