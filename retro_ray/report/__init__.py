"""``retro-ray report RUN_DIR``: a run's logs as an HTML page with PNG plots.

``data`` computes the numbers (pure functions), ``plots`` draws them (matplotlib, Agg), ``html``
renders the page, ``text`` formats names and numbers, and ``build`` ties them together
(``build_report``). The page answers: how many actor tokens, and how many dollars at a given price,
does one point of success gained over ReAct cost for Reflexion and Retroformer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Prices", "build_report"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI's parser reads the default prices without importing pyarrow.
    if name == "build_report":
        from retro_ray.report.build import build_report

        return build_report
    if name == "Prices":
        from retro_ray.report.data import Prices

        return Prices
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
