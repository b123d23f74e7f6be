"""Words and numbers for people: agent names, dollars, token counts (shared by page and plots)."""

from __future__ import annotations

import math

from retro_ray.report.data import base_agent, decoding

AGENT_LABEL = {
    "react": "ReAct",
    "reflexion": "Reflexion",
    "retroformer": "Retroformer",
    "rl-ppo": "RL (RLlib PPO)",
    "trajectory-oracle": "trajectory oracle",
    "ground-truth-oracle": "ground-truth oracle",
}


def label(agent: str) -> str:
    """An evaluation label for people: ``reflexion`` -> ``Reflexion``, ``reflexion-greedy`` ->
    ``Reflexion (greedy)``; an unknown agent as it is."""
    base = base_agent(agent)
    if base not in AGENT_LABEL:
        return agent
    return f"{AGENT_LABEL[base]} ({decoding(agent)})" if decoding(agent) else AGENT_LABEL[base]


def usd(x: float) -> str:
    """Dollars: whole from $100, cents from $0.10, three significant digits below ($0.000518);
    never in scientific notation."""
    if x < 0:
        return "-" + usd(-x)
    if x == 0:
        return "$0"
    if x >= 100:
        return f"${x:,.0f}"
    decimals = max(2, 2 - math.floor(math.log10(x)))
    return f"${x:,.{decimals}f}"


def tokens(x: float) -> str:
    """A token count: whole numbers from 100 on, three significant digits below (3.68, 0.441)."""
    if abs(x) >= 100 or x == 0:
        return f"{x:,.0f}"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def price(x: float) -> str:
    """A price as given: at least two decimals ($0.60), more when it has them ($0.075)."""
    return f"${x:,.2f}" if round(x, 2) == x else f"${x:,g}"
