"""``ray job submit`` entry point: the RL baseline (``retro-ray rl-baseline``).

    ray job submit --working-dir . --runtime-env jobs/runtime_env/rl_baseline.yaml -- \\
        python jobs/rl_baseline.py --config configs/rl_baseline.yaml --set run.output_dir=/shared/runs

Every argument goes to ``retro-ray rl-baseline`` unchanged. Inside a job ``RAY_ADDRESS`` is set,
so the command joins the cluster the job was submitted to: RLlib's EnvRunner actors
(``rl.num_env_runners``) and remote learners (``rl.num_learners``) are scheduled over its nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``jobs`` and ``retro_ray`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import run_cli


def main(argv: list[str] | None = None) -> int:
    run_cli(["rl-baseline", *(sys.argv[1:] if argv is None else argv)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
