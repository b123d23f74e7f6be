"""Secrets come from environment variables only, and are read one way everywhere.

A token written with ``echo TOKEN > file``, a Kubernetes Secret made from such a file, or a value
pasted with its newline carries whitespace at its end. Read raw on one side and stripped on the
other, it never matches and locks everyone out; so every reader of a key or token (the Serve
app's guard, the clients that call it) goes through :func:`read_secret`, which strips it.
"""

from __future__ import annotations

import os


def read_secret(env_name: str) -> str | None:
    """The value of the environment variable ``env_name`` without surrounding whitespace;
    None when it is unset or blank (no secret configured)."""
    value = os.environ.get(env_name, "").strip()
    return value or None
