"""``retro-ray demo``: the embedded default end to end, on one machine.

1. build the model zoo if missing (tokenizer, tiny actor, retrospective base; the recipe the
   config's ``serve.zoo_recipe`` names);
2. train: the Serve app serves the retrospective model, the rollout pool collects reflection groups
   with the ``train`` adapter, the Ray Train learner updates and publishes each adapter, the Serve
   app hot-swaps it, and the gate promotes ``prod`` (``configs/train.yaml``, or ``--config``:
   ``configs/train_families.yaml`` trains one reflector on the three families and prints the
   table of each);
3. evaluate on held-out test tasks, several seeds: ReAct, Reflexion (the untrained base),
   Retroformer (the trained adapter), the trajectory and ground-truth oracles;
4. write the report (``<run>/report/index.html``: plots and the cost per point of success) and
   print the table; everything is under the output directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from retro_ray.run_config import load_run_config

EVAL_TRIALS = 3
"""Trials per test task in the table (the paper's figures are after a few retries)."""
TRAIN_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "train.yaml"


def run_demo(
    tasks: int,
    output_dir: Path,
    seeds: int = 3,
    overrides: list[str] | None = None,
    config: Path | None = None,
) -> int:
    from retro_ray.driver.train import resolve_models, run_train
    from retro_ray.evaluation.conditions import TABLE_AGENTS
    from retro_ray.evaluation.play import evaluate_run
    from retro_ray.evaluation.table import format_agent_table
    from retro_ray.report import build_report

    start = time.monotonic()
    phases: dict[str, float] = {}

    def phase_done(name: str) -> None:
        phases[name] = round(time.monotonic() - start - sum(phases.values()), 1)
        print(f"[demo] {name} done in {phases[name] / 60:.1f} min", flush=True)

    output_dir = output_dir.resolve()
    config = config or (TRAIN_CONFIG if TRAIN_CONFIG.exists() else None)
    placement = [f"run.output_dir={output_dir}", f"registry.root={output_dir / 'registry'}"]
    cfg = load_run_config(config, [*placement, *(overrides or [])])  # checked before any work
    cfg = resolve_models(cfg)  # the zoo of serve.zoo_recipe, built when missing
    phase_done("zoo")
    summary = run_train(cfg)
    phase_done("train")
    run_dir = Path(summary["run_dir"])
    table = evaluate_run(
        run_dir,
        TABLE_AGENTS,
        seeds,
        [f"env.num_tasks={tasks}", f"trials.max_trials={EVAL_TRIALS}"],
    )
    phase_done("eval")
    report = build_report(run_dir)
    phase_done("report")
    table.update(train=summary, wall_time_s=time.monotonic() - start, phases_s=phases)
    (output_dir / "eval.json").write_text(json.dumps(table, indent=2))
    print(
        f"\nRetroformer ({table['adapter']}) on {cfg.env.name}: cumulative success by trial "
        f"({tasks} test tasks x {seeds} seeds; reflections greedy and sampled at temperature "
        f"{cfg.train.temperature:g})"
    )
    print(format_agent_table(table))
    print(
        f"\ndemo finished in {table['wall_time_s'] / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in phases.items())}); "
        f"table: {output_dir / 'eval.json'}; run: {run_dir}\nreport: {report['index_html']}"
    )
    return 0
