"""Gated promotion of ``prod``: a candidate adapter replaces the promoted one only if it is not
worse, on the validation split, by more than a configured margin.

``PromotionGate`` is the rule (two measured returns and a margin in, a decision with its reason
out). ``gated_promote`` is the orchestration: it measures both versions with the trial loop
against the serving endpoint (the version's immutable name, ``retro@N``, as the reflector model;
the base model is ``retro@0``), applies the rule, logs the decision as a registry event, and
promotes or rejects. The validation split is never part of the final evaluation table.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from retro_ray.config import Config
from retro_ray.registry import PROD_ALIAS, TRAIN_ALIAS, AdapterRegistry

logger = logging.getLogger(__name__)

Measure = Callable[[str], Awaitable[float]]
"""Mean validation return of the reflector served under a model name."""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    candidate: str
    current: str
    candidate_return: float
    current_return: float
    margin: float
    reason: str


class PromotionGate:
    def __init__(self, margin: float) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = margin

    def decide(
        self, candidate_return: float, current_return: float, candidate: str = "", current: str = ""
    ) -> GateDecision:
        """Promote iff ``candidate_return >= current_return - margin``."""
        delta = candidate_return - current_return
        promote = delta >= -self.margin
        verdict = "not worse than" if promote else "worse than"
        reason = (
            f"candidate {candidate} return {candidate_return:.4f} is {verdict} current {current} "
            f"return {current_return:.4f} (delta {delta:+.4f}, margin {self.margin:.4f})"
        )
        return GateDecision(
            promote, candidate, current, candidate_return, current_return, self.margin, reason
        )


class EndpointEvaluation:
    """Measures a served reflector version with the trial loop on the validation split (same
    tasks and seed for every version, results cached per immutable version name)."""

    def __init__(self, cfg: Config, out_dir: Path) -> None:
        self.cfg = cfg
        self.out_dir = out_dir

    async def __call__(self, model: str) -> float:
        from retro_ray.evaluate import evaluate

        cfg = self.cfg
        endpoint = dataclasses.replace(cfg.reflector.endpoint, model=model)
        cfg = dataclasses.replace(
            cfg,
            env=dataclasses.replace(cfg.env, split="validation", num_tasks=cfg.registry.gate_tasks),
            reflector=dataclasses.replace(cfg.reflector, kind="llm", endpoint=endpoint),
        )
        out = self.out_dir / model.replace("@", "_at_")
        out.mkdir(parents=True, exist_ok=True)
        summary = await evaluate(cfg, out, label=f"gate {model}", show_progress=False)
        return float(summary["mean_return_by_trial"][-1])


async def gated_promote(
    registry: AdapterRegistry,
    cfg: Config,
    candidate: int | str = TRAIN_ALIAS,
    measure: Measure | None = None,
    out_dir: Path | None = None,
) -> GateDecision:
    """Evaluate ``candidate`` against the current ``prod`` (or the base model) and promote it if
    the gate passes; the decision and its reason are logged and recorded either way."""
    version = registry.resolve(candidate)
    current = registry.state().aliases.get(PROD_ALIAS, 0)
    cand_name, cur_name = registry.version_name(version), registry.version_name(current)
    measure = measure or EndpointEvaluation(cfg, out_dir or cfg.registry_dir / "gate")
    gate = PromotionGate(cfg.registry.gate_margin)
    if version == current:
        decision = gate.decide(0.0, 0.0, cand_name, cur_name)
        return dataclasses.replace(decision, promote=False, reason=f"{cand_name} is already prod")
    candidate_return = await measure(cand_name)
    current_return = await measure(cur_name)
    decision = gate.decide(candidate_return, current_return, cand_name, cur_name)
    registry.record("gate", **dataclasses.asdict(decision))
    if decision.promote:
        registry.promote(version, PROD_ALIAS, reason=decision.reason)
        logger.info("promoted: %s", decision.reason)
    else:
        logger.warning("promotion rejected: %s", decision.reason)
    return decision
