"""Gated promotion of ``prod``: a candidate adapter replaces the promoted one only if it is not
worse, on the validation split, by more than a configured margin, and only on evidence: both
sides must have played at least ``registry.gate_min_tasks`` validation tasks (an empty split, or
every episode failing, measures 0.0 against 0.0, which proves nothing).

``PromotionGate`` is the rule (two measurements and a margin in, a decision with its outcome and
reason out). ``gated_promote`` is the orchestration: it measures both versions with the trial loop
against the serving endpoint (the version's immutable name, ``retro@N``, as the reflector model;
the base model is ``retro@0``), applies the rule, logs the decision as a registry event, and
promotes or rejects. The validation split is never part of the final evaluation table.

``GateLog`` keeps a training run's gate outcomes (``<run dir>/gates.jsonl``) apart from its
iteration records, so that a resumed run runs again a gate that errored or never ran.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from retro_ray.config import Config
from retro_ray.durable import append_jsonl, read_jsonl
from retro_ray.registry import PROD_ALIAS, TRAIN_ALIAS, AdapterRegistry

logger = logging.getLogger(__name__)

VALIDATION = "validation"
"""The split the gate plays: never part of the final evaluation table."""

PROMOTE = "promote"
REJECT = "reject"
NO_EVIDENCE = "no_evidence"
ALREADY_PROD = "already_prod"
PENDING = "pending"
OUTCOMES = (PROMOTE, REJECT, NO_EVIDENCE, ALREADY_PROD, PENDING)
"""What a gate decided: ``promote`` moved ``prod``; ``reject``: the candidate is worse;
``no_evidence``: too few validation tasks were played to compare (nothing moves); ``already_prod``:
the candidate is ``prod`` already (nothing measured); ``pending``: approval mode, the candidate
passed and waits for ``retro-ray registry approve`` (``prod`` has not moved)."""


@dataclass(frozen=True)
class Measurement:
    """A served reflector on the validation split: its mean return and the tasks it rests on."""

    mean_return: float
    tasks: int


Measure = Callable[[str], Awaitable[Measurement]]
"""Measures the reflector served under a model name on the validation split."""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    candidate: str
    current: str
    candidate_return: float
    current_return: float
    margin: float
    reason: str
    outcome: str = REJECT
    candidate_tasks: int = 0
    current_tasks: int = 0
    min_tasks: int = 1


class PromotionGate:
    def __init__(self, margin: float, min_tasks: int = 1) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if min_tasks < 1:
            raise ValueError(f"min_tasks must be >= 1 (a gate needs evidence), got {min_tasks}")
        self.margin = margin
        self.min_tasks = min_tasks

    def decide(
        self,
        candidate: Measurement,
        current: Measurement,
        candidate_name: str = "",
        current_name: str = "",
    ) -> GateDecision:
        """``no_evidence`` if either side played fewer than ``min_tasks`` tasks; else promote
        iff ``candidate.mean_return >= current.mean_return - margin``."""
        delta = candidate.mean_return - current.mean_return
        if min(candidate.tasks, current.tasks) < self.min_tasks:
            outcome = NO_EVIDENCE
            reason = (
                f"no evidence: candidate {candidate_name} played {candidate.tasks} and current "
                f"{current_name} {current.tasks} validation tasks, fewer than the "
                f"{self.min_tasks} the gate needs (registry.gate_min_tasks); prod stays"
            )
        else:
            outcome = PROMOTE if delta >= -self.margin else REJECT
            verdict = "not worse than" if outcome == PROMOTE else "worse than"
            reason = (
                f"candidate {candidate_name} return {candidate.mean_return:.4f} is {verdict} "
                f"current {current_name} return {current.mean_return:.4f} (delta {delta:+.4f}, "
                f"margin {self.margin:.4f}, {candidate.tasks} and {current.tasks} tasks)"
            )
        return GateDecision(
            promote=outcome == PROMOTE,
            candidate=candidate_name,
            current=current_name,
            candidate_return=candidate.mean_return,
            current_return=current.mean_return,
            margin=self.margin,
            reason=reason,
            outcome=outcome,
            candidate_tasks=candidate.tasks,
            current_tasks=current.tasks,
            min_tasks=self.min_tasks,
        )


class EndpointEvaluation:
    """Measures a served reflector version on the validation split through the evaluation path
    (:mod:`retro_ray.evaluation.play`: the trial loop, one Parquet log under ``out_dir``), at
    ``registry.gate_decoding``, with the same tasks and seed for every version; a version's episodes are reused by its immutable
    name. Its figure is the mean over tasks of the best return within the trials."""

    def __init__(self, cfg: Config, out_dir: Path) -> None:
        self.cfg = cfg
        self.out_dir = out_dir

    async def __call__(self, model: str) -> Measurement:
        from retro_ray.evaluation.conditions import Condition
        from retro_ray.evaluation.play import plans_for, play_local, read_rows
        from retro_ray.rollout.experience import ExperienceLog

        cfg = self.cfg
        endpoint = dataclasses.replace(cfg.reflector.endpoint, model=model)
        cfg = dataclasses.replace(
            cfg,
            env=dataclasses.replace(cfg.env, num_tasks=cfg.registry.gate_tasks),
            reflector=dataclasses.replace(cfg.reflector, endpoint=endpoint),
        )
        plans = plans_for(cfg, [Condition("reflexion", cfg.registry.gate_decoding)])
        seed = cfg.env.seed
        log = ExperienceLog(self.out_dir / "experience")
        await play_local(plans, [seed], log, progress=False, split=VALIDATION)
        rows = read_rows(log, plans, [seed], columns=("task_id", "return_after"))
        best: dict[str, float] = {}
        for row in rows:
            best[row["task_id"]] = max(best.get(row["task_id"], 0.0), row["return_after"])
        mean = sum(best.values()) / len(best) if best else 0.0
        return Measurement(mean, len(best))


async def gated_promote(
    registry: AdapterRegistry,
    cfg: Config,
    candidate: int | str = TRAIN_ALIAS,
    measure: Measure | None = None,
    out_dir: Path | None = None,
    iteration: int | None = None,
) -> GateDecision:
    """Evaluate ``candidate`` against the current ``prod`` (or the base model) and promote it if
    the gate passes; the decision and its reason are logged and recorded either way."""
    version = registry.resolve(candidate)
    current = registry.state().aliases.get(PROD_ALIAS, 0)
    cand_name, cur_name = registry.version_name(version), registry.version_name(current)
    measure = measure or EndpointEvaluation(cfg, out_dir or cfg.registry_dir / "gate")
    gate = PromotionGate(cfg.registry.gate_margin, cfg.registry.gate_min_tasks)
    if version == current:
        nothing = Measurement(0.0, 0)
        decision = gate.decide(nothing, nothing, cand_name, cur_name)
        reason = f"{cand_name} is already prod"
        return dataclasses.replace(decision, outcome=ALREADY_PROD, reason=reason)
    candidate_measured = await measure(cand_name)
    current_measured = await measure(cur_name)
    decision = gate.decide(candidate_measured, current_measured, cand_name, cur_name)
    if decision.promote and cfg.registry.require_approval:
        wait = f"waiting for approval: retro-ray registry approve {version} --by NAME --reason TEXT"
        reason = f"{decision.reason}; {wait}"
        decision = dataclasses.replace(decision, promote=False, outcome=PENDING, reason=reason)
    at = {} if iteration is None else {"iteration": iteration}
    registry.record("gate", **at, **dataclasses.asdict(decision))
    if decision.promote:
        registry.promote(version, PROD_ALIAS, reason=decision.reason)
        logger.info("promoted: %s", decision.reason)
    elif decision.outcome == PENDING:
        registry.request_promotion(version, PROD_ALIAS, reason=decision.reason)
        logger.warning("promotion %s", decision.reason)
    else:
        logger.warning("promotion %s: %s", decision.outcome, decision.reason)
    return decision


GATE_ERROR = "error"
"""A ``gates.jsonl`` outcome: the gate raised (the run stops; its resume runs the gate again)."""


class GateLog:
    """A training run's gate outcomes, one JSON a line in ``<run dir>/gates.jsonl``: the
    iteration, the ``GateDecision`` fields (``outcome`` among ``OUTCOMES``) and ``time``, or
    ``outcome: "error"`` with ``error``. Kept apart from ``metrics.jsonl`` because an iteration
    is recorded before its gate runs: a gate that raised, or never ran because the driver died,
    has no decision here, and ``due`` says to run it again when the run resumes."""

    def __init__(self, path: Path, promote_every: int, iterations: int) -> None:
        self.path = path
        self.promote_every = promote_every
        self.iterations = iterations

    def scheduled(self, iteration: int) -> bool:
        """Every ``promote_every`` iterations, and after the last."""
        return (iteration + 1) % self.promote_every == 0 or iteration + 1 == self.iterations

    def due(self, iteration: int) -> bool:
        """Scheduled and not decided yet (never ran, or raised)."""
        return self.scheduled(iteration) and iteration not in self.decided()

    def decided(self) -> set[int]:
        """Iterations whose gate reached a decision (any outcome but ``error``)."""
        return {
            int(entry["iteration"]) for entry in self.entries() if entry.get("outcome") in OUTCOMES
        }

    def entries(self) -> list[dict[str, object]]:
        """Every line, oldest first; a torn last line (a crash mid-write) is skipped."""
        return read_jsonl(self.path)

    def run(
        self,
        iteration: int,
        registry: AdapterRegistry,
        cfg: Config,
        out_dir: Path,
        measure: Measure | None = None,
    ) -> GateDecision:
        """``gated_promote`` of ``train``, its outcome appended (an error too, then re-raised)."""
        try:
            decision = asyncio.run(
                gated_promote(registry, cfg, TRAIN_ALIAS, measure, out_dir, iteration)
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            self._append({"iteration": iteration, "outcome": GATE_ERROR, "error": error})
            raise
        self._append({"iteration": iteration, **dataclasses.asdict(decision)})
        return decision

    def _append(self, entry: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Repairs a torn last line first: a decision glued onto it would be lost on resume.
        append_jsonl(self.path, {**entry, "time": time.time()})
