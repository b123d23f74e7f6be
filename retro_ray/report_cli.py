"""``retro-ray report RUN_DIR``: a run's logs as an HTML page (``retro_ray.report``), at given
token prices, beside the rows and learning curves of RL baselines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    from retro_ray.report.data import Prices

    rep = sub.add_parser(
        "report", help="HTML report of a run: plots, success by trial, tokens per point of success"
    )
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (run.output_dir/run.name)")
    rep.add_argument("--out", default=None, metavar="DIR", help="default: RUN_DIR/report")
    for part in ("prompt", "completion"):
        rep.add_argument(
            f"--price-{part}",
            type=float,
            default=getattr(Prices, f"{part}_per_mtok"),
            metavar="USD_PER_MTOK",
            help=f"actor {part} tokens, USD per million (default: %(default)s)",
        )
        rep.add_argument(
            f"--price-reflector-{part}",
            type=float,
            default=None,
            metavar="USD_PER_MTOK",
            help=f"reflector {part} tokens, USD per million (default: the actor's price)",
        )
    rep.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="RL_RUN_DIR",
        help="a retro-ray rl-baseline run: its rows and learning curve beside this run's",
    )
    rep.add_argument("--json", action="store_true", help="print report.json to stdout")
    rep.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from retro_ray.report import Prices, build_report

    prices = Prices(
        args.price_prompt,
        args.price_completion,
        args.price_reflector_prompt,
        args.price_reflector_completion,
    )
    report = build_report(args.run_dir, args.out, prices, [Path(b) for b in args.baseline])
    print(json.dumps(report) if args.json else report["index_html"])
    return 0
