"""``retro-ray data fetch``: download a benchmark data set (HotPotQA, ALFWorld) from its official
source into the cache its loader reads (``retro_ray.data_fetch``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_data_parsers(sub: argparse._SubParsersAction) -> None:
    from retro_ray.data_fetch import DATASETS

    data = sub.add_parser("data", help="benchmark data sets (HotPotQA, ALFWorld)")
    actions = data.add_subparsers(metavar="ACTION")
    fetch = actions.add_parser(
        "fetch",
        help="download a data set from its official source into the cache the loaders read",
    )
    fetch.add_argument("dataset", choices=DATASETS)
    fetch.add_argument(
        "--dest",
        default=None,
        metavar="DIR",
        help="default, where the loaders look: $RETRO_RAY_CACHE/data/hotpotqa (else "
        "~/.cache/retro_ray/data/hotpotqa); $ALFWORLD_DATA (else ~/.cache/alfworld)",
    )
    fetch.add_argument(
        "--source",
        default=None,
        metavar="URL_OR_PATH",
        help="instead of the official URL: another URL (http, https, file://) or a local path",
    )
    fetch.add_argument("--json", action="store_true", help="print one JSON object")
    fetch.set_defaults(handler=_data_fetch)


def _data_fetch(args: argparse.Namespace) -> int:
    from retro_ray.data_fetch import default_dest, fetch

    result = fetch(args.dataset, dest=args.dest, source=args.source)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.path)
    if args.dest is not None and Path(args.dest).expanduser() != default_dest(args.dataset):
        print(
            f"note: {args.dest} is not where the loaders look by default; pass "
            f"--data {result.path} (env.data_path)",
            file=sys.stderr,
        )
    return 0
