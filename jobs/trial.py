"""One sweep point as a Ray Tune function trainable: run a ``retro-ray`` command, report its summary.

The point runs in-process in the trial's actor (one Ray connection, no nested driver): the config
file travels as text (it need not exist on the trial's node) and the summary comes back through
``tune.report``, so the gathered table needs no shared file system.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.common import run_cli, set_args
from jobs.grid import Point, overrides
from jobs.table import summary_metrics


@dataclass(frozen=True)
class SweepSpec:
    """Everything a trial needs to run its point (shipped once through the object store)."""

    name: str
    """Sweep name: point ``i`` runs as ``run.name = <name>-<i:03d>``."""
    command: str
    """``eval`` or ``train``."""
    sweep_dir: str
    """Absolute directory of the sweep (shared storage on a multi-node cluster): the points' runs
    go to ``runs/``, Tune's state to ``tune/``, the table to ``sweep.parquet`` and ``sweep.md``."""
    points: list[Point]
    """The grid's points, indexed by the trial's ``index``."""
    config_text: str | None = None
    """The base YAML config, as text; None: the defaults."""
    sets: list[str] = field(default_factory=list)
    """``--set`` overrides common to every point (before the point's own)."""
    agent: str = "reflexion"
    """Agent of ``eval`` points."""

    @property
    def runs_dir(self) -> str:
        return str(Path(self.sweep_dir) / "runs")

    def run_name(self, index: int) -> str:
        return f"{self.name}-{index:03d}"

    def point_sets(self, index: int) -> list[str]:
        """All overrides of point ``index``: common, the point's, then its run name and output.

        A training point also gets its own Serve application name (Serve runs one application
        per name per cluster, so points that overlap must not share one) and its own adapter
        registry, even where the base config sets ``registry.root``: points sharing one would
        serve and gate each other's adapters.
        """
        own = [f"run.name={self.run_name(index)}", f"run.output_dir={self.runs_dir}"]
        if self.command == "train":
            own.append(f"serve.app_name={self.run_name(index)}")
            own.append(f"registry.root={Path(self.runs_dir) / self.run_name(index) / 'registry'}")
        return [*self.sets, *overrides(self.points[index]), *own]


def run_point(config: dict[str, Any], spec: SweepSpec) -> None:
    """The Tune trainable: ``config["index"]`` picks the point; reports the flat summary."""
    from ray import tune

    # Tune may run a trial in its own directory; relative paths in configs (data, registry)
    # mean the job's working directory, as in a single run.
    os.chdir(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()))
    index = int(config["index"])
    run_dir = Path(spec.runs_dir) / spec.run_name(index)
    summary_path = run_dir / f"{spec.command}-summary.json"
    with tempfile.TemporaryDirectory(prefix="retro-sweep-") as tmp:
        argv = [spec.command]
        if spec.config_text is not None:
            config_path = Path(tmp) / "config.yaml"
            config_path.write_text(spec.config_text)
            argv += ["--config", str(config_path)]
        argv += set_args(spec.point_sets(index))
        if spec.command == "eval":
            argv += ["--agent", spec.agent]
        argv += ["--json", str(summary_path)]
        try:
            run_cli(argv)
        except SystemExit as exc:  # a trial error for Tune, not an interpreter exit
            raise RuntimeError(f"retro-ray {spec.command} exited with {exc.code}") from None
    summary = json.loads(summary_path.read_text())
    if spec.command == "eval":  # a table of one agent, at its better decoding
        summary = summary["agents"][summary["best"].get(spec.agent, spec.agent)]
    metrics = summary_metrics(summary)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    tune.report({**numeric, "summary_json": json.dumps(metrics)})
