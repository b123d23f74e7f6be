"""Where the tests find the project's shared data: ``../shared/data`` beside the checkout (see
its README). Tests may read it; the product never does (users fetch data with ``retro-ray data
fetch`` or pass ``--data``)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
HOTPOTQA = SHARED_DATA / "hotpotqa"
ALFWORLD = SHARED_DATA / "alfworld"
