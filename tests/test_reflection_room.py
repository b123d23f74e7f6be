"""``benchmarks.reflection_room``: the room a retrospective base leaves, and whether its samples
reach it."""

from __future__ import annotations

import asyncio
import json

import pytest

from benchmarks.reflection_room import Reflectors, main, measure_family, summarize
from retro_ray.agents.actors import ScriptedActor
from retro_ray.agents.reflectors import TrajectoryOracleReflector, VagueReflector
from retro_ray.zoo.advice import family_config


def test_summary_counts_reach_and_groups_without_signal() -> None:
    def probe(oracle: bool, greedy: bool, wins: list[bool]) -> dict:
        return {
            "oracle": ["o", oracle],
            "greedy": ["g", greedy],
            "samples": [["s", w] for w in wins],
        }

    rows = [
        {"after_trial_1": probe(True, False, [False, False, True, False])},
        {"after_trial_1": probe(True, True, [False, False, False, False, True])},
        {
            "after_trial_1": probe(False, False, [False] * 4),
            "after_trial_2": probe(True, False, [True] * 4),
        },
    ]
    first = summarize(rows, group_size=4)["after_trial_1"]
    assert first["failed_trials"] == 3
    assert first["success"]["oracle"] == pytest.approx(2 / 3)
    assert first["success"]["base_greedy"] == pytest.approx(1 / 3)
    assert first["success"]["base_sampled"] == pytest.approx((0.25 + 0.2 + 0.0) / 3)
    assert first["reachable"] == pytest.approx(2 / 3)  # the fifth sample counts for reach...
    assert first["oracle_reachable"] == 1.0
    assert first["zero_signal_share"] == pytest.approx(2 / 3)  # ...but not in a group of four
    second = summarize(rows, group_size=4)["after_trial_2"]
    assert second["failed_trials"] == 1 and second["zero_signal_share"] == 1.0


@pytest.mark.parametrize("env", ["lookup", "household", "shop"])
def test_samples_as_good_as_the_oracle_reach_all_its_wins(env: str) -> None:
    # The scripted actor follows advice; with the oracle as the "sampled" reflector every sample
    # is the oracle's reflection, so the samples reach exactly the oracle's wins, and a group of
    # identical reflections never carries a signal. Vague advice ("greedy" here) wins less.
    cfg = family_config(env, 40, 3, 0)
    oracle = TrajectoryOracleReflector()
    reflectors = Reflectors(oracle=oracle, greedy=VagueReflector(), sampled=oracle)
    result = asyncio.run(measure_family(cfg, ScriptedActor(), reflectors, 4, 4))
    first = result["summary"]["after_trial_1"]
    assert first["failed_trials"] >= 10
    assert first["reachable"] == first["success"]["oracle"] == first["success"]["base_sampled"]
    assert first["oracle_reachable"] == 1.0
    assert first["zero_signal_share"] == 1.0
    assert first["success"]["base_greedy"] < first["success"]["oracle"]


def test_cli_measures_a_zoo_build(zoo_tiny, capsys, tmp_path) -> None:
    out = tmp_path / "rows.json"
    args = ["--recipe", "tiny", "--cache-dir", str(zoo_tiny.root.parent), "--tasks", "4"]
    args += ["--samples", "2", "--group-size", "2", "--threads", "1", "--out", str(out), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["families"]) == {"lookup", "household", "shop"}
    for family, summary in report["families"].items():
        for figures in summary.values():
            assert 0.0 <= figures["reachable"] <= 1.0
            assert 0.0 <= figures["zero_signal_share"] <= 1.0
        rows = json.loads(out.read_text())[family]["rows"]
        assert all(len(r["after_trial_1"]["samples"]) == 2 for r in rows)


def test_too_few_samples_for_a_group_is_refused() -> None:
    from benchmarks.reflection_room import measure

    with pytest.raises(ValueError, match="samples >= group_size"):
        measure(None, None, ["lookup"], 4, samples=2, group_size=4)  # type: ignore[arg-type]


def test_the_cli_refuses_bad_sizes_before_building_a_zoo(tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit):
        main(["--recipe", "tiny", "--cache-dir", str(cache), "--samples", "2", "--group-size", "4"])
    assert "samples >= group_size" in capsys.readouterr().err
    assert not cache.exists()
