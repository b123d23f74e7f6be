"""The files a resume reads: JSON-lines logs with a torn last line (a crash mid-append), and the
run's recorded ``config.json``, compared instead of overwritten. Real files; no Ray."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from retro_ray.config import ConfigError, load_config
from retro_ray.driver.gate import GateLog
from retro_ray.driver.resume import CONFIG_FILE, RESUMABLE, record_config
from retro_ray.driver.train import earlier_records, run_train
from retro_ray.durable import append_jsonl, read_jsonl

TORN = '{"iteration": 2, "groups": 3, "coll'


def write_lines(path: Path, *records: dict, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


# -- JSON lines ------------------------------------------------------------------------------------


def test_a_torn_last_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.jsonl"
    write_lines(path, {"iteration": 0}, {"iteration": 1}, tail=TORN)
    with caplog.at_level(logging.WARNING, logger="retro_ray.durable"):
        assert read_jsonl(path) == [{"iteration": 0}, {"iteration": 1}]
    assert any("torn last line 3" in r.getMessage() for r in caplog.records)


def test_a_bad_line_before_the_last_is_damage_and_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 0}\nnot json\n{"iteration": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        read_jsonl(path)


def test_an_append_after_a_crash_repairs_the_torn_line(tmp_path: Path) -> None:
    """Appending onto a torn line would glue the new record to the fragment and lose it too."""
    path = tmp_path / "gates.jsonl"
    write_lines(path, {"iteration": 0}, tail=TORN)
    append_jsonl(path, {"iteration": 2, "done": True})
    assert read_jsonl(path) == [{"iteration": 0}, {"iteration": 2, "done": True}]
    # A complete record that only lost its newline is kept.
    path.write_text('{"iteration": 0}\n{"iteration": 1}')
    append_jsonl(path, {"iteration": 2})
    assert [r["iteration"] for r in read_jsonl(path)] == [0, 1, 2]
    # A file that is one torn line: it is cut away whole.
    path.write_text(TORN)
    append_jsonl(path, {"iteration": 0})
    assert read_jsonl(path) == [{"iteration": 0}]


def test_resume_reads_metrics_with_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_lines(path, {"iteration": 0, "groups": 4}, tail=TORN)
    assert earlier_records(path) == {0: {"iteration": 0, "groups": 4}}


def test_gate_log_survives_a_torn_last_line(tmp_path: Path) -> None:
    gates = GateLog(tmp_path / "gates.jsonl", promote_every=1, iterations=3)
    write_lines(gates.path, {"iteration": 0, "outcome": "promote"}, tail='{"iteration": 1, "out')
    assert gates.decided() == {0} and gates.due(1)
    gates._append({"iteration": 1, "outcome": "promote"})
    assert gates.decided() == {0, 1} and not gates.due(1)


# -- config.json -----------------------------------------------------------------------------------


def train_config(tmp_path: Path, *extra: str):
    return load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            "run.name=exp",
            f"actor.model_dir={tmp_path / 'actor'}",
            f"serve.model_dir={tmp_path / 'retrospective'}",
            *extra,
        ],
    )


def test_a_resumed_run_keeps_its_config(tmp_path: Path) -> None:
    cfg = train_config(tmp_path)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True)
    assert record_config(run_dir, cfg) == []  # a new run: recorded
    recorded = json.loads((run_dir / CONFIG_FILE).read_text())
    assert recorded["learner"]["lr"] == cfg.learner.lr
    assert record_config(run_dir, cfg) == []  # the same config resumes

    longer = train_config(tmp_path, "train.iterations=40", "rollout.num_workers=5")
    changes = record_config(run_dir, longer)
    assert {c.field for c in changes} == {"train.iterations", "rollout.num_workers"}
    assert json.loads((run_dir / CONFIG_FILE).read_text())["train"]["iterations"] == 40

    other = train_config(tmp_path, "train.iterations=40", "learner.lr=0.01", "run.seed=3")
    with pytest.raises(ConfigError) as info:
        record_config(run_dir, other)
    message = str(info.value)
    assert "learner.lr: 0.002 -> 0.01" in message and "run.seed: 0 -> 3" in message
    assert "train.iterations" not in message.split("Fields a resume")[0]
    assert "run.name" in message and "train.iterations" in message  # the fix, and what may change
    assert json.loads((run_dir / CONFIG_FILE).read_text())["learner"]["lr"] == 0.002  # untouched


def test_fields_added_since_the_run_was_recorded_compare_with_their_defaults(
    tmp_path: Path,
) -> None:
    cfg = train_config(tmp_path)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True)
    record_config(run_dir, cfg)
    recorded = json.loads((run_dir / CONFIG_FILE).read_text())
    del recorded["registry"]["gate_min_tasks"]  # a run made before the field existed
    (run_dir / CONFIG_FILE).write_text(json.dumps(recorded))
    assert record_config(run_dir, cfg) == []
    changed = dataclasses.replace(cfg, registry=dataclasses.replace(cfg.registry, gate_min_tasks=5))
    with pytest.raises(ConfigError, match=r"registry.gate_min_tasks: 1 -> 5"):
        record_config(run_dir, changed)


def test_every_resumable_field_exists() -> None:
    from retro_ray.config import Config, to_dict

    tree = to_dict(Config())
    for field in RESUMABLE:
        node = tree
        for part in field.removesuffix(".*").split("."):
            assert part in node, f"{field} is not a config field"
            node = node[part]


def test_train_refuses_to_resume_under_another_config_before_any_work(tmp_path: Path) -> None:
    cfg = train_config(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    record_config(cfg.run_dir, cfg)
    with pytest.raises(ConfigError, match=r"learner.lr: 0.002 -> 0.05"):
        run_train(train_config(tmp_path, "learner.lr=0.05"))
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == [CONFIG_FILE]  # nothing started


def test_registry_events_after_a_torn_line_are_kept(tmp_path: Path) -> None:
    """The registry's audit log: an event appended after a crash mid-append is not lost."""
    from retro_ray.registry import AdapterRegistry
    from tests.support.tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    registry = AdapterRegistry(tmp_path / "registry", tiny.model_dir, max_lora_rank=8)
    registry.publish(tiny.adapters["a"], step=1)
    with (registry.root / "events.jsonl").open("a") as f:
        f.write('{"time": 1.0, "event": "prom')  # the process died here
    registry.publish(tiny.adapters["b"], step=2)
    assert [e["event"] for e in registry.events()] == ["publish", "publish"]
