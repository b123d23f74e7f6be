"""``ray job submit`` entry point: the Retroformer training loop (``retro-ray train``).

    ray job submit --working-dir . --runtime-env jobs/runtime_env/train.yaml -- \\
        python jobs/train.py --config configs/train.yaml --set run.output_dir=/shared/runs

Every argument goes to ``retro-ray train`` unchanged. Inside a job ``RAY_ADDRESS`` is set, so the
command joins the cluster the job was submitted to instead of starting a local Ray; its rollout
workers, Serve application and Ray Train learner are scheduled over the cluster's nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``jobs`` and ``retro_ray`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import run_cli


def main(argv: list[str] | None = None) -> int:
    run_cli(["train", *(sys.argv[1:] if argv is None else argv)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
