"""Distributed rollouts: episodes on a pool of Ray actors, recorded in a Parquet experience log.

``episodes`` (plain asyncio: the trial loop), ``branching`` (the branching rule) and ``experience``
(the log) import without Ray; ``worker``, ``pool`` and ``metrics`` are the Ray edge.
"""
