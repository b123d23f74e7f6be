"""Serving: the adapter registry, the two-phase hot-swap controller, the Ray Serve application
with its OpenAI-compatible API, and gated promotion. ``registry``, ``validation``, ``controller``,
``runtime`` and ``gate`` import no Ray; ``app`` and ``launch`` are the Ray edge."""
