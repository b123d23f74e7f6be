"""Released zoo builds (``retro_ray.zoo.release``): the package's release serves the current
recipe and verifies; a cache miss installs a release byte for byte instead of building; a
corrupt release is refused and leaves no cache entry."""

from __future__ import annotations

import json

import pytest

from retro_ray.zoo.build import build_zoo
from retro_ray.zoo.recipes import get_recipe
from retro_ray.zoo.release import (
    CHECKSUMS,
    file_digest,
    make_release,
    released_build,
    verify_checksums,
)


def test_the_families_release_is_the_current_recipes_build() -> None:
    """A recipe change moves its key; the release must move with it, or `make demo` falls back
    to a 25-minute build."""
    key = get_recipe("families").key
    shipped = released_build(key)
    assert shipped is not None, f"no released build {key}: python -m retro_ray.zoo.release families"
    verify_checksums(shipped)
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert f"{manifest['name']}-{manifest['hash']}" == key


def test_a_cache_miss_installs_the_release(zoo_tiny, tmp_path) -> None:
    releases = tmp_path / "released"
    make_release("tiny", cache_dir=zoo_tiny.root.parent, releases=releases)
    lines: list[str] = []
    installed = build_zoo("tiny", cache_dir=tmp_path / "cache", log=lines.append, releases=releases)
    assert installed.released and not installed.cache_hit
    assert installed.manifest == zoo_tiny.manifest
    assert any("installing the released build" in line for line in lines)
    ours = sorted(p.relative_to(installed.root) for p in installed.root.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(zoo_tiny.root) for p in zoo_tiny.root.rglob("*") if p.is_file())
    assert ours == theirs  # the checksums file stays with the release
    for name in ours:
        assert file_digest(installed.root / name) == file_digest(zoo_tiny.root / name)
    again = build_zoo("tiny", cache_dir=tmp_path / "cache", log=lines.append, releases=releases)
    assert again.cache_hit and not again.released


def test_a_corrupt_release_is_refused(zoo_tiny, tmp_path) -> None:
    releases = tmp_path / "released"
    shipped = make_release("tiny", cache_dir=zoo_tiny.root.parent, releases=releases)
    weights = shipped / "actor" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    (shipped / "retrospective" / "tokenizer.json").unlink()
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError) as error:
        build_zoo("tiny", cache_dir=cache, log=lambda _: None, releases=releases)
    message = str(error.value)
    assert "actor/model.safetensors differs from its checksum" in message
    assert "missing retrospective/tokenizer.json" in message and "--no-release" in message
    assert not [p for p in cache.iterdir()]  # no entry, and no staging left behind
    assert (shipped / CHECKSUMS).is_file()
