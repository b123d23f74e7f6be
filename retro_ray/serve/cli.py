"""``retro-ray serve``: the Ray Serve application (``retro-ray registry ...`` is in
:mod:`retro_ray.registry_cli`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from retro_ray.run_config import load_run_config


def add_serve_parsers(sub: argparse._SubParsersAction, add_config_args: Any) -> None:
    serve = sub.add_parser("serve", help="the Ray Serve application (OpenAI-compatible API)")
    add_config_args(serve)
    serve.add_argument("--num-cpus", type=float, default=None, help="logical CPUs of a new Ray")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow serve.host beyond loopback without a bearer token (anyone who reaches the "
        "port can use the app); without it such a start is refused",
    )
    serve.set_defaults(handler=_serve, long_running=True)


def _serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM (both a ``KeyboardInterrupt``, see ``retro_ray.stopping``),
    then delete the app (replicas finish their requests), stop Serve and the Ray started here."""
    import ray
    from ray import serve

    from retro_ray.serve.guard import serve_token_sha256
    from retro_ray.serve.launch import start, stop

    cfg = load_run_config(args.config, args.set)
    if not args.insecure:  # refuse an open non-loopback bind before anything starts
        serve_token_sha256(cfg.serve.host, cfg.serve.api_key_env)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    app = None
    try:
        app = start(cfg, insecure=args.insecure)
        table = ray.get(app.controller.table.remote())
        print(json.dumps({"url": app.url, "app": app.app_name, "table": table}), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if app is not None:
            stop(app)
        serve.shutdown()
        ray.shutdown()
    return 0
