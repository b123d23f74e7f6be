"""The single-controller driver: the one training loop (``loop``: collect, learn, publish, swap,
gate) run on Ray executors by ``retro-ray train`` (``train``) or in one process by the learning
proof (``local``), and the promotion gate (``gate``)."""
