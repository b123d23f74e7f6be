"""Entry points for ``ray job submit`` (``train.py``, ``eval.py``, ``sweep.py``) and their helpers.

Each entry point is a thin shell over the ``retro-ray`` command line, run as a Ray job's driver:

    ray job submit --working-dir . --runtime-env jobs/runtime_env/eval.yaml -- \\
        python jobs/eval.py --config configs/builtin_scripted.yaml --agent react

See ``docs/operations.md``.
"""
