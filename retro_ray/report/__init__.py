"""``retro-ray report RUN_DIR``: a run's logs as an HTML page with PNG plots.

``data`` computes the numbers (pure functions; the evaluation's, and with ``training_stats``,
``reflections`` and ``history`` the training run's, the reflections compared and the registry's
history), ``plots`` draws them (matplotlib, Agg), ``html`` renders the page (``answer`` writes
its plain-text answer, ``history_html`` its gate and registry section), ``text`` formats names
and numbers, and ``build`` ties them together (``build_report``). The page answers: how many
tokens (actor and reflector), and how many dollars at given prices, does one point of success
gained over ReAct cost for Reflexion and Retroformer, plus the one-off cost of the training run
(episodes, wall time, core-hours, tokens). It also shows what was learned (the base and the
trained reflection side by side on held-out failed trials, with what the next trial did) and the
run's gate decisions and registry history (promotions, rollbacks, approvals).
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
