"""``build_report``: read a run directory's logs, compute the numbers, draw, write the page.

Reads (all optional; at least one of the two logs or ``metrics.jsonl`` required)::

    RUN_DIR/experience/         training experience log (ExperienceLog; run=<name>/iteration=<i>)
    RUN_DIR/eval/experience/    evaluation log (iteration=<seed>, mode = the evaluation label)
    RUN_DIR/eval/table.json     retro-ray eval's table: its ``trials``, and its ``conditions``
                                (label -> partition): only those partitions are read
    RUN_DIR/metrics.jsonl       one record per training iteration (``cpus``: the CPUs it ran on)
    RUN_DIR/summary.json        the train summary;  RUN_DIR/config.json  the resolved config
    RUN_DIR/gates.jsonl         the driver's gate outcomes (one per gate run)
    RUN_DIR/gate/               the promotion gate's validation episodes (counted)
    <registry>/events.jsonl     the registry's audit log (root: config.json's ``registry.root``,
                                else RUN_DIR/registry): promotions, rollbacks, approvals, gates

Writes to ``out_dir`` (default ``RUN_DIR/report``): ``index.html``, ``report.json`` and the PNGs
that have data (``success_by_trial``, ``cost``: evaluation; ``reflection_reward``,
``throughput``: training).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from retro_ray.evaluation.play import TABLE_FILE, current_rows
from retro_ray.report import answer, curve, data, history, html, reflections, training_stats
from retro_ray.rollout.experience import ExperienceLog

TRAIN_LOG = Path("experience")
EVAL_LOG = Path("eval") / "experience"
METRICS = "metrics.jsonl"
GATE_DIR = "gate"
EXAMPLES = 5
"""Reflections shown side by side (base vs trained), at most."""
FIGURES = ("success_by_trial", "cost", "reflection_reward", "throughput", "learning_curve")

_TRAIN_COLUMNS = ("run", "iteration", "task_id", "reward", "started_at", "finished_at")
_TRAIN_COLUMNS += data.TOKEN_COLUMNS  # the training run's cost


def read_log(root: Path, columns: tuple[str, ...]) -> pa.Table | None:
    """The log's ``columns`` (partition columns included), or None when it holds no episode.

    Only the needed columns are read (trajectories and prompts are most of a log's bytes)."""
    if not root.is_dir() or next(root.rglob("part-*.parquet"), None) is None:
        return None
    return ExperienceLog(root).read(columns=columns)


def read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``metrics.jsonl``, ``events.jsonl``); a line that is not
    a JSON object (a torn last line of a run killed mid-write) is skipped with a note."""
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            out.append(record)
        else:
            notes.append(f"{path}: line {number} is not a JSON object; skipped")
    return out


def registry_root(run_dir: Path, config: dict | None) -> Path:
    """The run's adapter registry: config.json's ``registry.root`` (a relative root is tried
    from the working directory, where ``retro-ray train`` resolved it, then from the run
    directory), else ``RUN_DIR/registry``."""
    section = (config or {}).get("registry")
    root = section.get("root") if isinstance(section, dict) else None
    if not root:
        return run_dir / "registry"
    path = Path(root)
    if path.is_absolute() or path.is_dir():
        return path
    return run_dir / path if (run_dir / path).is_dir() else path


def read_registry_history(
    root: Path, events: list[dict[str, Any]], notes: list[str]
) -> list[dict[str, Any]]:
    """The registry's history (promotions, rollbacks, pending promotions, approvals), read by the
    registry itself; if a malformed event stops that reader, the same kinds of event are picked
    from ``events`` (``events.jsonl`` read line by line) with a note."""
    from retro_ray.registry import HISTORY_EVENTS, registry_history

    try:
        return [dict(e) for e in registry_history(root)]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        notes.append(f"registry {root}: {exc!r} in events.jsonl; its events read line by line")
    return [e for e in events if e.get("event") in HISTORY_EVENTS]


def count_gate_episodes(gate_dir: Path) -> int:
    """Validation episodes the promotion gate played: one Parquet part per episode (experience
    log) or one line per task (``results.jsonl``), wherever below ``gate_dir`` they are."""
    if not gate_dir.is_dir():
        return 0
    parts = sum(1 for _ in gate_dir.rglob("part-*.parquet"))
    lines = sum(
        sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
        for path in gate_dir.rglob("results.jsonl")
    )
    return parts + lines


def table_conditions(eval_root: Path) -> dict[str, str] | None:
    """``{label: partition}`` of the last ``retro-ray eval`` table (``table.json`` beside the
    log), or None for a log without one (written before tables named their partitions)."""
    table = _read_json(eval_root.parent / TABLE_FILE) or {}
    conditions = table.get("conditions")
    return conditions if isinstance(conditions, dict) and conditions else None


def read_evaluation(eval_root: Path, columns: tuple[str, ...]) -> data.Rows | None:
    """The evaluation rows the report is about, or None when there are none: those of the
    partitions the last table was built from (``mode`` = the condition label), never an older
    adapter's episodes left in the same log; a log without such a table is read whole."""
    if table_conditions(eval_root) is not None:
        return current_rows(eval_root.parent, columns) or None
    return read_log(eval_root, columns)


def read_examples(eval_root: Path, labels: tuple[str, str]) -> data.Rows:
    """Trials 0 and 1 of the two agents whose reflections the page compares, with their
    reflections and trajectories (only these rows: trajectories are most of a log's bytes)."""
    if table_conditions(eval_root) is not None:
        rows = current_rows(eval_root.parent, reflections.EXAMPLE_COLUMNS)
        return [r for r in rows if r["mode"] in labels and r["trial"] <= 1]
    wanted = ds.field("mode").isin(list(labels)) & (ds.field("trial") <= 1)
    return (
        ExperienceLog(eval_root)
        .dataset()
        .to_table(filter=wanted, columns=list(reflections.EXAMPLE_COLUMNS))
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def run_name(
    run_dir: Path, summary: dict | None, config: dict | None, train: pa.Table | None
) -> str:
    """summary.json's ``run``, else config.json's ``run.name``, else the training log's only run,
    else the directory name."""
    if summary and summary.get("run"):
        return str(summary["run"])
    if config and isinstance(config.get("run"), dict) and config["run"].get("name"):
        return str(config["run"]["name"])
    if train is not None:
        runs = sorted(set(train.column("run").to_pylist()))
        if len(runs) == 1:
            return runs[0]
    return run_dir.resolve().name


def _check_run_dir(run_dir: Path, has_any_log: bool) -> None:
    if not run_dir.is_dir():
        raise ValueError(
            f"run directory {run_dir} does not exist: run `retro-ray train` first "
            "(it writes run.output_dir/run.name) and pass that directory"
        )
    if not has_any_log:
        raise ValueError(
            f"{run_dir} holds no log to report on (no {TRAIN_LOG}/, {EVAL_LOG}/ or {METRICS}): "
            f"run `retro-ray train` first, then `retro-ray eval --run {run_dir}`"
        )


def evaluation_numbers(
    table: data.Rows, prices: data.Prices, trials: int | None = None
) -> dict[str, Any]:
    """Success by trial, tokens per task and the cost per point of an evaluation log, over
    ``trials`` trials (at least the longest task of the log). ``best`` names each agent's
    better decoding (the label the headline uses)."""
    episodes = data.eval_episodes(table)
    trials = max(trials or 0, data.max_trials(episodes))
    success = data.success_by_trial(episodes, trials)
    tokens = data.tokens_per_task(episodes)
    return {
        "trials": trials,
        "baseline": data.baseline_label(success) or data.BASELINE,
        "agents": success,
        "best": data.best_labels(success),
        "tokens_per_task": tokens,
        "cost": data.cost_comparison(success, tokens, prices),
    }


def reflection_examples(eval_root: Path, evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The base and the trained reflector side by side (their better decodings), or None when
    the evaluation has no Reflexion or no Retroformer."""
    best = evaluation["best"]
    if data.BASE_REFLECTOR not in best or data.TRAINED_REFLECTOR not in best:
        return None
    labels = (best[data.BASE_REFLECTOR], best[data.TRAINED_REFLECTOR])
    return reflections.reflection_examples(
        read_examples(eval_root, labels), *labels, limit=EXAMPLES
    )


def read_baseline(baseline_dir: Path, notes: list[str]) -> tuple[list[dict[str, Any]], list]:
    """An rl-baseline run's evaluation rows (its last table's) and its learning-curve records."""
    if not (baseline_dir / "eval" / TABLE_FILE).is_file():
        raise ValueError(
            f"baseline {baseline_dir}: no eval/{TABLE_FILE}; pass the run directory of a "
            "finished retro-ray rl-baseline run"
        )
    rows = current_rows(baseline_dir / "eval", data.EVAL_COLUMNS)
    return rows, read_jsonl(baseline_dir / "curve.jsonl", notes)


def build_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    prices: data.Prices | None = None,
    baselines: Sequence[Path] = (),
) -> dict[str, Any]:
    """Write the report of ``run_dir`` to ``out_dir`` (default ``run_dir/report``); returns the
    content of ``report.json``. ``baselines``: rl-baseline run directories whose evaluation rows
    join this run's and whose learning curves are drawn beside Retroformer's. Raises ValueError
    for a missing run directory or one without any log."""
    run_dir = Path(run_dir)
    prices = prices or data.Prices()
    train_root, eval_root, metrics_path = run_dir / TRAIN_LOG, run_dir / EVAL_LOG, run_dir / METRICS
    train = read_log(train_root, _TRAIN_COLUMNS) if run_dir.is_dir() else None
    evaluation_log = read_evaluation(eval_root, data.EVAL_COLUMNS) if run_dir.is_dir() else None
    baseline_notes: list[str] = []
    baseline_curves: dict[str, list[dict[str, Any]]] = {}
    for baseline in baselines:
        rows, records = read_baseline(Path(baseline), baseline_notes)
        own = evaluation_log.to_pylist() if hasattr(evaluation_log, "to_pylist") else evaluation_log
        evaluation_log = [*(own or []), *rows]
        for agent in sorted({r["mode"] for r in rows}):
            baseline_curves[agent] = curve.baseline_curve(records)
    _check_run_dir(
        run_dir, train is not None or evaluation_log is not None or metrics_path.is_file()
    )

    notes: list[str] = baseline_notes
    metrics = read_jsonl(metrics_path, notes)
    summary = _read_json(run_dir / "summary.json")
    config = _read_json(run_dir / "config.json")
    name = run_name(run_dir, summary, config, train)
    if train is not None:
        runs = set(train.column("run").to_pylist())
        if len(runs) > 1 and name in runs:
            notes.append(f"training log holds runs {sorted(runs)}; reporting run {name!r}")
            train = train.filter(pc.equal(train.column("run"), name))

    evaluation = None
    if evaluation_log is not None:
        # retro-ray eval records the configured trials per task in table.json: a log where every
        # task was won early is still reported up to that trial.
        eval_table = _read_json(eval_root.parent / TABLE_FILE) or {}
        trials = eval_table.get("trials") if isinstance(eval_table.get("trials"), int) else None
        evaluation = evaluation_numbers(evaluation_log, prices, trials)
    rows: data.Rows = train if train is not None else []
    examples = reflection_examples(eval_root, evaluation) if evaluation is not None else None
    training_cost = training_stats.training_cost(
        rows, metrics, summary, prices, count_gate_episodes(run_dir / GATE_DIR)
    )
    registry = registry_section(
        registry_root(run_dir, config), name, metrics, run_dir / history.GATE_LOG, notes
    )
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "run": name,
        "run_dir": str(run_dir.resolve()),
        "out_dir": str(out.resolve()),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "prices": prices.as_dict(),
        "sources": {
            "training log": str(train_root) if train is not None else None,
            "evaluation log": str(eval_root) if evaluation_log is not None else None,
            "metrics": str(metrics_path) if metrics else None,
            "summary": str(run_dir / "summary.json") if summary else None,
            "config": str(run_dir / "config.json") if config else None,
            "registry events": registry["events_path"] if registry["found"] else None,
        },
        "evaluation": evaluation,
        "answer": answer.cost_sentence(evaluation, str(run_dir), training_cost),
        "examples": examples,
        "training": {
            "reward_by_iteration": training_stats.reward_by_iteration(rows),
            "throughput": training_stats.throughput(rows),
            "iteration_seconds": training_stats.iteration_seconds(metrics),
            "summary": summary,
            "cost": training_cost,
        },
        "registry": registry,
        "learning_curves": (
            {"retroformer": curve.retroformer_curve(evaluation, len(rows)), **baseline_curves}
            if baseline_curves
            else None
        ),
        "notes": notes,
    }
    report["figures"] = draw(report, out)
    report["index_html"] = str((out / "index.html").resolve())
    (out / "index.html").write_text(html.render(report))
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def registry_section(
    root: Path, run: str, metrics: list[dict[str, Any]], gate_log: Path, notes: list[str]
) -> dict[str, Any]:
    """The gate's decisions (the driver's ``gate_log``, registry ``gate`` events and
    ``metrics.jsonl``) and the registry's history (promotions, rollbacks, pending promotions,
    approvals) of this run."""
    events = read_jsonl(root / "events.jsonl", notes)
    timeline = history.registry_timeline(read_registry_history(root, events, notes), events, run)
    if timeline["other_runs"]:
        notes.append(f"registry {root}: {timeline['other_runs']} events of other runs left out")
    return {
        "root": str(root),
        "events_path": str(root / "events.jsonl"),
        "found": bool(events),
        "gate": history.gate_decisions(metrics, events, run, read_jsonl(gate_log, notes)),
        **timeline,
    }


def draw(report: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the figures that have data; returns {figure: file name}. A figure without data is
    removed from ``out`` so that no stale PNG of an earlier report stays next to the page."""
    from retro_ray.report import plots

    evaluation, training = report["evaluation"], report["training"]
    figures: dict[str, str] = {}

    def target(key: str) -> Path:
        figures[key] = f"{key}.png"
        return out / figures[key]

    if evaluation is not None:
        plots.success_by_trial(evaluation["agents"], target("success_by_trial"))
        plots.cost(
            evaluation["tokens_per_task"],
            evaluation["cost"],
            evaluation["baseline"],
            target("cost"),
        )
    if training["reward_by_iteration"]:
        plots.reflection_reward(training["reward_by_iteration"], target("reflection_reward"))
    if training["throughput"].get("minutes") or training["iteration_seconds"]:
        plots.throughput(
            training["throughput"], training["iteration_seconds"], target("throughput")
        )
    if report.get("learning_curves"):
        plots.learning_curve(report["learning_curves"], target("learning_curve"))
    for key in FIGURES:
        if key not in figures:
            (out / f"{key}.png").unlink(missing_ok=True)
    return figures
