"""``retro-ray registry list|publish|promote|rollback|gate|approve``: the adapter registry.

Registry commands work on the directory alone (no Ray): a running server picks up every alias
change within ``serve.poll_interval_s`` and hot-swaps it. In approval mode
(``registry.require_approval``) the gate only requests a promotion of ``prod``; ``approve`` is
the person's step, recorded with who and why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from typing import Any

from retro_ray.config import Config
from retro_ray.registry import ALIASES, PROD_ALIAS, TRAIN_ALIAS
from retro_ray.run_config import load_run_config


def add_registry_parsers(sub: argparse._SubParsersAction, add_config_args: Any) -> None:
    reg = sub.add_parser("registry", help="the adapter registry: versions and aliases")
    actions = reg.add_subparsers(metavar="ACTION")
    ls = actions.add_parser("list", help="versions, aliases, pending promotions, recent events")
    add_config_args(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)
    pub = actions.add_parser("publish", help="validate and store an adapter as a new version")
    add_config_args(pub)
    pub.add_argument("adapter_dir")
    pub.add_argument("--step", type=int, default=0, help="training step that produced it")
    pub.add_argument("--score", type=float, default=None, help="its evaluation score")
    pub.add_argument("--config-hash", default="", help="hash of the training config")
    pub.add_argument("--base-model-hash", default=None, help="hash of the base it trained on")
    pub.add_argument("--alias", default=TRAIN_ALIAS, choices=[*ALIASES, "none"])
    pub.set_defaults(handler=_publish)
    promote = actions.add_parser("promote", help="point an alias at a version (no gate)")
    add_config_args(promote)
    promote.add_argument("version", help="number, retro@N or alias")
    promote.add_argument("--alias", default=PROD_ALIAS, choices=ALIASES)
    promote.add_argument("--reason", default="manual")
    promote.add_argument("--by", default=None, help="who (required for prod in approval mode)")
    promote.set_defaults(handler=_promote)
    back = actions.add_parser("rollback", help="point an alias back at an earlier version")
    add_config_args(back)
    back.add_argument("version", nargs="?", default=None, help="default: the previous one")
    back.add_argument("--alias", default=PROD_ALIAS, choices=ALIASES)
    back.add_argument("--reason", default="manual rollback")
    back.add_argument("--by", default=None, help="who rolls back (recorded)")
    back.set_defaults(handler=_rollback)
    gate = actions.add_parser(
        "gate", help="evaluate a candidate and promote it to prod if it passes"
    )
    add_config_args(gate)
    gate.add_argument("--candidate", default=TRAIN_ALIAS)
    gate.set_defaults(handler=_gate)
    approve = actions.add_parser(
        "approve", help="approve a promotion the gate passed (registry.require_approval)"
    )
    add_config_args(approve)
    approve.add_argument("version", help="the pending version: number or retro@N")
    approve.add_argument("--by", required=True, help="who approves (recorded)")
    approve.add_argument("--reason", required=True, help="why (recorded)")
    approve.set_defaults(handler=_approve)


def open_registry(cfg: Config) -> Any:
    from retro_ray.registry import AdapterRegistry
    from retro_ray.serve.launch import resolve_model_dir

    r = cfg.registry
    return AdapterRegistry(
        cfg.registry_dir,
        resolve_model_dir(cfg),
        r.name,
        r.max_lora_rank,
        run=cfg.run.name,
        shared=r.shared,
    )


def _list(args: argparse.Namespace) -> int:
    registry = open_registry(load_run_config(args.config, args.set))
    state = registry.state()
    versions = [asdict(registry.get(v)) for v in state.versions]
    pending = [asdict(p) for p in registry.pending()]
    if args.json:
        listing = {"aliases": state.aliases, "revision": state.revision, "versions": versions}
        print(json.dumps({**listing, "pending": pending}))
        return 0
    by_version = {v: a for a, v in state.aliases.items()}
    for meta in versions:
        alias = by_version.get(meta["version"], "")
        print(f"{meta['name']:12s} step {meta['step']:<6d} score {meta['eval_score']!s:8s} {alias}")
    for p in pending:
        print(
            f"pending: {registry.version_name(p['version'])} -> {p['alias']} ({p['reason']}); "
            f"approve with: retro-ray registry approve {p['version']} --by NAME --reason TEXT"
        )
    for event in registry.events()[-5:]:
        print(f"event: {json.dumps(event)}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    registry = open_registry(load_run_config(args.config, args.set))
    meta = registry.publish(
        args.adapter_dir,
        step=args.step,
        eval_score=args.score,
        config_hash=args.config_hash,
        base_model_hash=args.base_model_hash,
        alias=None if args.alias == "none" else args.alias,
    )
    print(json.dumps(asdict(meta)))
    return 0


def _promote(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.set)
    if cfg.registry.require_approval and args.alias == PROD_ALIAS and not args.by:
        raise ValueError(
            "registry.require_approval is on: a manual promotion of prod must say who makes it "
            "(--by NAME --reason TEXT), or approve a pending one (retro-ray registry approve)"
        )
    registry = open_registry(cfg)
    version = registry.promote(args.version, args.alias, reason=args.reason, by=args.by)
    print(json.dumps({"alias": args.alias, "version": version}))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    registry = open_registry(load_run_config(args.config, args.set))
    version = registry.rollback(args.alias, args.version, reason=args.reason, by=args.by)
    print(json.dumps({"alias": args.alias, "version": version}))
    return 0


def _gate(args: argparse.Namespace) -> int:
    from retro_ray.driver.gate import PENDING, gated_promote

    cfg = load_run_config(args.config, args.set)
    decision = asyncio.run(gated_promote(open_registry(cfg), cfg, args.candidate))
    print(json.dumps(asdict(decision)))
    return 0 if decision.promote or decision.outcome == PENDING else 1


def _approve(args: argparse.Namespace) -> int:
    registry = open_registry(load_run_config(args.config, args.set))
    waiting = {p.version: p.alias for p in registry.pending()}
    try:
        version = registry.approve(args.version, by=args.by, reason=args.reason)
    except KeyError as exc:  # not a version of this registry
        raise ValueError(exc.args[0]) from None
    print(json.dumps({"alias": waiting.get(version), "version": version, "by": args.by.strip()}))
    return 0
