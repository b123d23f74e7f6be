"""The adapter registry, its validation, the swap controller, the replica's adapter set and the
promotion gate: plain classes, no Ray (fast)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from retro_ray.driver.gate import GateLog, Measurement, PromotionGate, gated_promote
from retro_ray.registry import AdapterRegistry, RegistryOwnedByAnotherRun, RegistryState
from retro_ray.registry.validation import (
    AdapterRejected,
    check_adapter_name,
    is_valid_model_name,
    model_hash,
)
from retro_ray.serve.controller import AliasController, ModelNotFound
from retro_ray.serve.runtime import ReplicaRuntime
from tests.support.tiny_model import TinyModel, build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_registry"))


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Another architecture (hidden 64, one head): its adapters fit no other base."""
    return build_tiny_model(tmp_path_factory.mktemp("other_base"), hidden_size=64, num_layers=1)


@pytest.fixture
def registry(tiny: TinyModel, tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "registry", tiny.model_dir, max_lora_rank=8)


def copy_adapter(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_publish_stores_version_metadata_and_moves_train(
    registry: AdapterRegistry, tiny: TinyModel
) -> None:
    meta = registry.publish(
        tiny.adapters["a"], step=7, eval_score=0.5, config_hash="cfg1", base_model_hash=None
    )
    assert (meta.version, meta.name, meta.step, meta.rank) == (1, "retro@1", 7, 8)
    assert meta.base_model_hash == model_hash(tiny.model_dir) == registry.base_model_hash
    assert set(meta.files) == {"adapter_config.json", "adapter_model.safetensors"}
    state = registry.state()
    assert state.aliases == {"train": 1} and state.versions == (1,)
    assert registry.verify(1) == registry.path(1)
    second = registry.publish(tiny.adapters["b"], step=8)
    assert second.name == "retro@2" and registry.state().aliases["train"] == 2
    assert registry.state().revision == state.revision + 1
    assert [e["event"] for e in registry.events()] == ["publish", "publish"]
    on_disk = json.loads((registry.root / "versions" / "2" / "metadata.json").read_text())
    assert on_disk["config_hash"] == "" and on_disk["version"] == 2


def _corrupt(dst: Path) -> None:
    (dst / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 100)


def _truncate(dst: Path) -> None:
    path = dst / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


def _pickle(dst: Path) -> None:
    (dst / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")


def _bad_target(dst: Path) -> None:
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg["target_modules"] = [*cfg["target_modules"], "lm_head"]
    (dst / "adapter_config.json").write_text(json.dumps(cfg))


def _nan(dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(dst / "adapter_model.safetensors")
    first = next(iter(tensors))
    tensors[first][0, 0] = float("nan")
    save_file(tensors, dst / "adapter_model.safetensors")


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_corrupt, "corrupt safetensors"),
        (_truncate, "corrupt safetensors"),
        (_pickle, "pickle"),
        (_bad_target, "not supported"),
        (_nan, "finite"),
    ],
)
def test_bad_adapters_are_rejected_and_leave_the_registry_unchanged(
    registry: AdapterRegistry, tiny: TinyModel, tmp_path: Path, damage, why: str
) -> None:
    registry.publish(tiny.adapters["a"])
    before = registry.state()
    bad = copy_adapter(tiny.adapters["b"], tmp_path / "bad")
    damage(bad)
    with pytest.raises(AdapterRejected, match=why):
        registry.publish(bad)
    assert registry.state() == before
    assert registry.events()[-1]["event"] == "reject"


def test_rank_above_engine_limit_is_rejected(tiny: TinyModel, tmp_path: Path) -> None:
    small = AdapterRegistry(tmp_path / "r", tiny.model_dir, max_lora_rank=4)
    with pytest.raises(AdapterRejected, match="exceeds the engine's max_lora_rank 4"):
        small.publish(tiny.adapters["a"])
    assert small.state().versions == ()


def test_adapter_of_another_base_model_is_rejected(
    registry: AdapterRegistry, other_base: TinyModel, tiny: TinyModel
) -> None:
    with pytest.raises(AdapterRejected, match="another base model"):
        registry.publish(other_base.adapters["a"])
    with pytest.raises(AdapterRejected, match="base model hash"):
        registry.publish(tiny.adapters["a"], base_model_hash=model_hash(other_base.model_dir))
    with pytest.raises(ValueError, match="another base model"):
        AdapterRegistry(registry.root, other_base.model_dir)


def test_verify_catches_files_changed_after_publish(
    registry: AdapterRegistry, tiny: TinyModel
) -> None:
    registry.publish(tiny.adapters["a"])
    (registry.path(1) / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(AdapterRejected, match="changed since publish"):
        registry.verify(1)


def test_promote_and_rollback_to_any_earlier_version(
    registry: AdapterRegistry, tiny: TinyModel
) -> None:
    for _ in range(3):
        registry.publish(tiny.adapters["a"])
    with pytest.raises(ValueError, match="no earlier version"):
        registry.rollback("prod")
    for v in (1, 2, 3):
        registry.promote(v)
    assert registry.resolve("prod") == 3
    assert registry.rollback() == 2 and registry.resolve("prod") == 2
    assert registry.rollback() == 1
    registry.promote("retro@3")
    assert registry.rollback(to=1) == 1
    assert [e["event"] for e in registry.events()][-2:] == ["promote", "rollback"]
    with pytest.raises(KeyError):
        registry.promote(9)


def test_names_are_validated() -> None:
    for bad in ("../x", "a/b", "", "x" * 80, "a b"):
        with pytest.raises(ValueError):
            check_adapter_name(bad)
    assert all(is_valid_model_name(m) for m in ("prod", "retro@3", "retrospective", "gpt-4o"))
    assert not any(is_valid_model_name(m) for m in ("../etc", "a/b", "retro@x", "", "..", "x@1@2"))


# -- a publish interrupted by a crash or a full disk ---------------------------------------------


def test_publish_after_a_crash_between_rename_and_index_write(
    registry: AdapterRegistry, tiny: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version directory is in place, the index never heard of it: the next publish must not
    reuse its number (the rename would hit a non-empty directory), and both stay loadable."""
    registry.publish(tiny.adapters["a"])
    real_write = AdapterRegistry._write_index

    def crash_once(self: AdapterRegistry, index: dict) -> None:
        monkeypatch.setattr(AdapterRegistry, "_write_index", real_write)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AdapterRegistry, "_write_index", crash_once)
    with pytest.raises(OSError, match="No space left"):
        registry.publish(tiny.adapters["b"])
    index = json.loads((registry.root / "registry.json").read_text())
    assert index["next_version"] == 2 and registry.state().aliases == {"train": 1}
    assert registry.versions() == [1, 2]  # the leftover: complete, named by no alias

    reopened = AdapterRegistry(registry.root, tiny.model_dir, max_lora_rank=8)
    meta = reopened.publish(tiny.adapters["b"], step=5)
    assert meta.version == 3 and reopened.state().aliases == {"train": 3}
    assert reopened.versions() == [1, 2, 3]
    for version in (2, 3):
        assert reopened.verify(version) == reopened.path(version)
        assert reopened.get(version).name == f"retro@{version}"
    assert json.loads((registry.root / "registry.json").read_text())["next_version"] == 4
    assert reopened.events()[-1]["skipped"] == [2]
    assert not list((registry.root / "versions").glob(".*"))


def test_a_failed_copy_leaves_no_staging_and_the_registry_unchanged(
    registry: AdapterRegistry, tiny: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retro_ray.registry.versions as versions

    registry.publish(tiny.adapters["a"])
    before = registry.state()
    real_copy = versions.shutil.copyfile

    def full_disk(src, dst):
        if str(dst).endswith("adapter_model.safetensors"):
            raise OSError(28, "No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(versions.shutil, "copyfile", full_disk)
    with pytest.raises(OSError, match="No space left"):
        registry.publish(tiny.adapters["b"])
    assert sorted(p.name for p in (registry.root / "versions").iterdir()) == ["1"]
    assert registry.state() == before
    monkeypatch.setattr(versions.shutil, "copyfile", real_copy)
    assert registry.publish(tiny.adapters["b"]).version == 2


def test_staging_left_by_a_killed_publish_is_removed(
    registry: AdapterRegistry, tiny: TinyModel
) -> None:
    """A process killed mid-copy runs no cleanup; the next publish (under the lock, so no other
    publish is running) removes what it left."""
    stale = registry.root / "versions" / ".1-killed"
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"half a file")
    assert registry.publish(tiny.adapters["a"]).version == 1
    assert sorted(p.name for p in (registry.root / "versions").iterdir()) == ["1"]


# -- one registry per run ------------------------------------------------------------------------


def run_config(tmp_path: Path, tiny: TinyModel, run: str, *extra: str):
    from retro_ray.config import load_config

    return load_config(
        None,
        [
            f"run.name={run}",
            f"run.output_dir={tmp_path / 'runs'}",
            f"serve.model_dir={tiny.model_dir}",
            "registry.max_lora_rank=8",
            *extra,
        ],
    )


def test_runs_in_one_tree_get_their_own_registries(tiny: TinyModel, tmp_path: Path) -> None:
    from retro_ray.registry_cli import open_registry

    a, b = (run_config(tmp_path, tiny, run) for run in ("a", "b"))
    assert a.registry_dir == tmp_path / "runs" / "a" / "registry"
    assert b.registry_dir == tmp_path / "runs" / "b" / "registry"
    reg_a = open_registry(a)
    reg_a.publish(tiny.adapters["a"])
    reg_b = open_registry(b)
    assert reg_b.state().aliases == {} and reg_b.versions() == []
    index = json.loads((a.registry_dir / "registry.json").read_text())
    assert index["run"] == "a" and reg_a.owner == "a" and reg_b.owner == "b"


def test_another_runs_registry_is_refused_unless_shared(tiny: TinyModel, tmp_path: Path) -> None:
    from retro_ray.registry_cli import open_registry

    shared_root = f"registry.root={tmp_path / 'one-registry'}"
    open_registry(run_config(tmp_path, tiny, "a", shared_root)).publish(tiny.adapters["a"])
    with pytest.raises(RegistryOwnedByAnotherRun) as refused:
        open_registry(run_config(tmp_path, tiny, "b", shared_root))
    message = str(refused.value)
    assert "belongs to run 'a', not to run 'b'" in message
    assert "registry.shared=true" in message and "<run dir>/registry" in message
    opened = open_registry(run_config(tmp_path, tiny, "b", shared_root, "registry.shared=true"))
    assert opened.owner == "a" and opened.resolve("train") == 1


def test_a_registry_without_an_owner_becomes_the_first_runs(
    registry: AdapterRegistry, tiny: TinyModel
) -> None:
    """Registries written before owners were recorded: the first run to open one claims it."""
    assert registry.owner is None
    AdapterRegistry(registry.root, tiny.model_dir, run="a")
    with pytest.raises(RegistryOwnedByAnotherRun):
        AdapterRegistry(registry.root, tiny.model_dir, run="b")


def test_sweep_training_points_get_distinct_registries(tiny: TinyModel, tmp_path: Path) -> None:
    from jobs.trial import SweepSpec
    from retro_ray.config import load_config

    spec = SweepSpec(
        name="sw",
        command="train",
        sweep_dir=str(tmp_path / "sweep"),
        points=[{"run.seed": 0}, {"run.seed": 1}],
        sets=[f"registry.root={tmp_path / 'fixed'}"],  # a base config that pins one registry
    )
    dirs = [load_config(None, spec.point_sets(i)).registry_dir for i in range(2)]
    assert dirs == [tmp_path / "sweep" / "runs" / f"sw-00{i}" / "registry" for i in range(2)]


# -- the controller: two-phase swap -----------------------------------------------------------


def test_swap_flips_only_after_every_replica_loaded() -> None:
    async def two_phase() -> None:
        ctl = AliasController("retro", "base", swap_timeout_s=5.0)
        ctl.register("r1")
        ctl.register("r2")
        swap = asyncio.create_task(ctl.apply(RegistryState(1, {"train": 1, "prod": 1}, (1,))))
        await asyncio.sleep(0.05)
        assert ctl.wanted == {1} and ctl.resolve("train").version == 0  # still the old table
        await ctl.report("r1", [1], {})
        await asyncio.sleep(0.05)
        assert not swap.done() and ctl.resolve("prod").model == "retro@0"
        await ctl.report("r2", [1], {})
        result = await swap
        assert result.ok and ctl.resolve("retro").model == "retro@1" and ctl.epoch == 1
        assert ctl.resolve("base").model == "base" and ctl.resolve("retro@1").version == 1
        with pytest.raises(ModelNotFound):
            ctl.resolve("retro@2")
        # a failed load keeps the old table and says why
        swap = asyncio.create_task(ctl.apply(RegistryState(2, {"train": 2, "prod": 1}, (1, 2))))
        await asyncio.sleep(0.05)
        await ctl.report("r1", [1, 2], {})
        await ctl.report("r2", [1], {2: "AdapterRejected: changed since publish"})
        result = await swap
        assert not result.ok and "changed since publish" in result.reason
        assert ctl.resolve("train").version == 1 and ctl.wanted == {1} and ctl.epoch == 1

    asyncio.run(two_phase())


def test_dead_replicas_do_not_block_a_swap() -> None:
    async def scenario() -> None:
        ctl = AliasController("retro", "base", swap_timeout_s=5.0, replica_ttl_s=0.1)
        ctl.register("gone")
        await asyncio.sleep(0.2)
        result = await ctl.apply(RegistryState(1, {"train": 1}, (1,)))
        assert result.ok and ctl.resolve("train").version == 1

    asyncio.run(scenario())


# -- the replica's adapter set ------------------------------------------------------------------


class FakeEngine:
    tokenizer = None

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.max_seen = 0
        self.hold: asyncio.Event | None = None  # set: generate waits for it (a request in flight)

    async def load_adapter(self, name: str, path: object) -> None:
        assert name not in self.loaded
        self.loaded.append(name)
        self.max_seen = max(self.max_seen, len(self.loaded))

    async def unload_adapter(self, name: str) -> None:
        self.loaded.remove(name)

    async def generate(self, prompts, sampling):
        await (self.hold.wait() if self.hold is not None else asyncio.sleep(0.05))
        assert sampling.adapter is None or sampling.adapter in self.loaded
        return [sampling.adapter for _ in prompts]

    async def shutdown(self) -> None:
        pass


def test_runtime_bounds_loaded_versions_and_keeps_in_flight_ones() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        rt = ReplicaRuntime(engine, lambda v: Path(f"/v/{v}"), lambda v: f"retro@{v}", 3, 2.0)
        await rt.sync([1, 2])
        assert rt.loaded == [1, 2]
        engine.hold = asyncio.Event()  # the request on 3 stays in flight until released
        slow = asyncio.create_task(rt.generate(["x"], _sampling(), 3))  # loads 3: full
        while 3 not in rt.loaded:  # poll: loading goes through a thread, however slow
            await asyncio.sleep(0.001)
        await rt.sync([4])  # 1, 2 unpinned and idle: unloaded; 3 is in flight: kept
        assert rt.loaded == [3, 4] and not slow.done()
        engine.hold.set()
        assert await slow == ["retro@3"]
        for v in (5, 6, 7):
            assert await rt.generate(["x"], _sampling(), v) == [f"retro@{v}"]
        assert engine.max_seen <= 3 and 4 in rt.loaded  # pinned survives the churn
        assert await rt.generate(["x"], _sampling(), 0) == [None]

    asyncio.run(scenario())


def _sampling():
    from retro_ray.llm.base import SamplingParams

    return SamplingParams(max_tokens=2)


# -- the promotion gate --------------------------------------------------------------------------


def test_gate_rule() -> None:
    gate = PromotionGate(margin=0.05)
    assert gate.decide(Measurement(0.50, 10), Measurement(0.50, 10)).promote
    assert gate.decide(Measurement(0.46, 10), Measurement(0.50, 10)).promote  # within the margin
    worse = gate.decide(Measurement(0.40, 10), Measurement(0.50, 10), "retro@3", "retro@2")
    assert not worse.promote and worse.outcome == "reject"
    assert "worse than current retro@2" in worse.reason
    with pytest.raises(ValueError):
        PromotionGate(-1.0)
    with pytest.raises(ValueError, match="needs evidence"):
        PromotionGate(0.0, min_tasks=0)


def test_gate_without_evidence_does_not_promote() -> None:
    """No validation task played (an empty split, every episode failed): 0.0 against 0.0 used
    to promote; it is no evidence either way now."""
    nothing = PromotionGate(margin=0.0).decide(Measurement(0.0, 0), Measurement(0.0, 0))
    assert not nothing.promote and nothing.outcome == "no_evidence"
    assert "no evidence" in nothing.reason
    few = PromotionGate(margin=0.0, min_tasks=5).decide(Measurement(0.9, 5), Measurement(0.1, 4))
    assert not few.promote and few.outcome == "no_evidence" and few.current_tasks == 4


def test_gate_decoding_is_greedy_or_sampled() -> None:
    from retro_ray.config import ConfigError, load_config

    assert load_config(None, []).registry.gate_decoding == "greedy"
    assert load_config(None, ["registry.gate_decoding=sampled"]).registry.gate_decoding == "sampled"
    with pytest.raises(ConfigError, match=r"registry\.gate_decoding"):
        load_config(None, ["registry.gate_decoding=beam"])


def test_gate_min_tasks_is_checked_against_gate_tasks() -> None:
    from retro_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"registry\.gate_min_tasks"):
        load_config(None, ["registry.gate_tasks=3", "registry.gate_min_tasks=4"])
    with pytest.raises(ConfigError, match=r"registry\.gate_min_tasks"):
        load_config(None, ["registry.gate_min_tasks=0"])


def fixed_measure(returns: dict[str, float], tasks: int = 10, measured: list[str] | None = None):
    async def measure(model: str) -> Measurement:
        if measured is not None:
            measured.append(model)
        return Measurement(returns[model], tasks)

    return measure


def test_gated_promote_measures_both_and_logs_the_decision(
    registry: AdapterRegistry, tiny: TinyModel
) -> None:
    from retro_ray.config import load_config

    cfg = load_config(None, ["registry.gate_margin=0.0"])
    measured: list[str] = []
    measure = fixed_measure({"retro@0": 0.3, "retro@1": 0.4, "retro@2": 0.35}, measured=measured)
    registry.publish(tiny.adapters["a"])
    first = asyncio.run(gated_promote(registry, cfg, "train", measure))
    assert first.promote and registry.resolve("prod") == 1 and measured == ["retro@1", "retro@0"]
    registry.publish(tiny.adapters["b"])
    second = asyncio.run(gated_promote(registry, cfg, "train", measure))
    assert not second.promote and registry.resolve("prod") == 1
    gates = [e for e in registry.events() if e["event"] == "gate"]
    assert [g["promote"] for g in gates] == [True, False] and "worse than" in gates[1]["reason"]
    assert [g["outcome"] for g in gates] == ["promote", "reject"]


def test_gated_promote_on_no_validation_tasks_keeps_prod(
    registry: AdapterRegistry, tiny: TinyModel
) -> None:
    from retro_ray.config import load_config

    cfg = load_config(None, ["registry.gate_margin=0.0"])
    registry.publish(tiny.adapters["a"])
    decision = asyncio.run(
        gated_promote(registry, cfg, "train", fixed_measure({"retro@1": 0.0, "retro@0": 0.0}, 0))
    )
    assert decision.outcome == "no_evidence" and "prod" not in registry.state().aliases
    assert registry.events()[-1]["outcome"] == "no_evidence"


def test_a_gate_that_raised_or_never_ran_is_due_again_on_resume(
    registry: AdapterRegistry, tiny: TinyModel, tmp_path: Path
) -> None:
    from retro_ray.config import load_config

    cfg = load_config(None, [])
    registry.publish(tiny.adapters["a"])
    log = GateLog(tmp_path / "run" / "gates.jsonl", promote_every=2, iterations=5)
    assert [it for it in range(5) if log.scheduled(it)] == [1, 3, 4]
    assert log.due(1)  # never ran

    async def endpoint_down(model: str) -> Measurement:
        raise ConnectionError("validation endpoint unreachable")

    with pytest.raises(ConnectionError):
        log.run(1, registry, cfg, tmp_path / "gate", endpoint_down)
    assert log.entries()[-1]["outcome"] == "error" and "unreachable" in log.entries()[-1]["error"]
    resumed = GateLog(log.path, promote_every=2, iterations=5)  # the resumed run's view
    assert resumed.due(1) and not resumed.due(2)
    measure = fixed_measure({"retro@1": 0.5, "retro@0": 0.2})
    decision = resumed.run(1, registry, cfg, tmp_path / "gate", measure)
    assert decision.promote and registry.resolve("prod") == 1
    assert resumed.decided() == {1} and not resumed.due(1) and resumed.due(3)
    with log.path.open("a") as f:
        f.write('{"iteration": 3, "outc')  # a crash mid-write
    assert resumed.decided() == {1} and resumed.due(3)


# -- approval mode: a person in the loop before prod moves ----------------------------------------


def cli_config(tmp_path: Path, tiny: TinyModel, *extra: str) -> list[str]:
    sets = [
        "run.name=approved",
        f"run.output_dir={tmp_path / 'runs'}",
        f"serve.model_dir={tiny.model_dir}",
        "registry.max_lora_rank=8",
        "registry.require_approval=true",
        *extra,
    ]
    return [arg for item in sets for arg in ("--set", item)]


def test_approval_mode_waits_for_registry_approve(
    tiny: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from retro_ray.cli import main
    from retro_ray.config import load_config
    from retro_ray.registry import registry_history
    from retro_ray.registry_cli import open_registry

    config = cli_config(tmp_path, tiny)
    assert main(["registry", "publish", str(tiny.adapters["a"]), *config]) == 0
    cfg = load_config(None, config[1::2])
    registry = open_registry(cfg)
    measure = fixed_measure({"retro@1": 0.6, "retro@0": 0.2})
    decision = asyncio.run(gated_promote(registry, cfg, "train", measure))
    assert decision.outcome == "pending" and not decision.promote
    assert "prod" not in registry.state().aliases  # the gate alone moves nothing

    capsys.readouterr()
    assert main(["registry", "list", "--json", *config]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(p["version"], p["alias"]) for p in listing["pending"]] == [(1, "prod")]
    assert main(["registry", "list", *config]) == 0
    assert "pending: retro@1 -> prod" in capsys.readouterr().out

    with pytest.raises(SystemExit):  # who and why are required
        main(["registry", "approve", "1", *config])
    approve = ["registry", "approve", "1", "--by", "alice", "--reason", "read 20 reflections"]
    assert main([*approve, *config]) == 0
    assert json.loads(capsys.readouterr().out) == {"alias": "prod", "version": 1, "by": "alice"}
    assert registry.resolve("prod") == 1 and registry.pending() == []
    assert main([*approve, *config]) == 2  # nothing pending any more
    assert "no pending promotion" in capsys.readouterr().err

    # a manual promotion of prod must name who makes it in approval mode
    assert main(["registry", "publish", str(tiny.adapters["b"]), *config]) == 0
    assert main(["registry", "promote", "2", *config]) == 2
    assert "--by NAME" in capsys.readouterr().err and registry.resolve("prod") == 1
    assert main(["registry", "promote", "2", "--by", "bob", "--reason", "hotfix", *config]) == 0
    assert main(["registry", "rollback", "--by", "carol", "--reason", "regression", *config]) == 0

    history = registry_history(cfg.registry_dir)
    assert [(h["event"], h["version"], h["previous"], h["by"]) for h in history] == [
        ("pending", 1, None, None),
        ("approve", 1, None, "alice"),
        ("promote", 2, 1, "bob"),
        ("rollback", 1, 2, "carol"),
    ]
    approval = history[1]
    assert approval["reason"] == "read 20 reflections" and approval["alias"] == "prod"
    assert "not worse than" in approval["gate_reason"] and approval["run"] == "approved"
    assert set(approval) == {
        "time", "event", "alias", "version", "previous", "reason", "by", "gate_reason", "run"
    }  # fmt: skip


def test_without_approval_mode_the_gate_promotes_and_history_shows_it(
    registry: AdapterRegistry, tiny: TinyModel
) -> None:
    from retro_ray.config import load_config
    from retro_ray.registry import registry_history

    cfg = load_config(None, [])
    registry.publish(tiny.adapters["a"])
    asyncio.run(gated_promote(registry, cfg, "train", fixed_measure({"retro@1": 1, "retro@0": 0})))
    assert registry.resolve("prod") == 1 and registry.pending() == []
    with (registry.root / "events.jsonl").open("a") as f:
        f.write('{"time": 1, "event": "prom')  # a torn last line does not break the history
    [promotion] = registry_history(registry.root)
    assert promotion["event"] == "promote" and promotion["by"] is None
    assert "not worse than" in promotion["reason"]
