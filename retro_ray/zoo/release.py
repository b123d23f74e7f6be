"""Released zoo builds: finished builds shipped inside the package, as a model hub ships weights.

The ``families`` build takes about 25 minutes on a 2-core machine, twice the first run's budget,
so its models ship with the package (``retro_ray/zoo/released/<recipe>-<hash12>/``: the build's
directory as ``retro-ray zoo build`` wrote it, plus ``SHA256SUMS``). A cache without that build
installs the release, checksums verified, instead of building (a second, not 25 minutes), and
every machine then runs the same weights. The key holds the recipe's hash and the build code's
version, so a release serves exactly the recipe it was built from; a changed recipe builds anew.
``retro-ray zoo build --no-release`` builds locally all the same.

Making a release from a build in the cache (a developer's step)::

    python -m retro_ray.zoo.release families      # -> retro_ray/zoo/released/families-<hash12>/
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

RELEASED = Path(__file__).resolve().parent / "released"
CHECKSUMS = "SHA256SUMS"


def released_build(key: str, releases: Path = RELEASED) -> Path | None:
    """The released build of a recipe key (``families-cef33d273543``), if the package ships one."""
    path = releases / key
    return path if (path / CHECKSUMS).is_file() else None


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _build_files(build: Path) -> list[Path]:
    return sorted(p for p in build.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(build: Path) -> None:
    """``SHA256SUMS`` of every file of a build (``sha256sum -c`` reads it)."""
    lines = [f"{file_digest(p)}  {p.relative_to(build).as_posix()}" for p in _build_files(build)]
    (build / CHECKSUMS).write_text("\n".join(lines) + "\n")


def verify_checksums(build: Path) -> None:
    """Raise unless every file ``SHA256SUMS`` lists is present with its digest, and no other."""
    listed = {}
    for line in (build / CHECKSUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    present = {p.relative_to(build).as_posix() for p in _build_files(build)}
    problems = [f"missing {n}" for n in sorted(listed.keys() - present)]
    problems += [f"unlisted {n}" for n in sorted(present - listed.keys())]
    problems += [
        f"{n} differs from its checksum"
        for n in sorted(listed.keys() & present)
        if file_digest(build / n) != listed[n]
    ]
    if problems:
        raise RuntimeError(
            f"released zoo build {build.name}: {'; '.join(problems)}. Reinstall retro_ray, or "
            "build the models here with `retro-ray zoo build --recipe NAME --no-release`"
        )


def install_release(source: Path, staging: Path) -> None:
    """Copy a released build into ``staging`` (a fresh directory beside the cache entry, renamed
    into place by the caller) and verify the copy."""
    shutil.copytree(source, staging, dirs_exist_ok=True)
    verify_checksums(staging)
    (staging / CHECKSUMS).unlink()  # the cache entry is a build like any other


def make_release(
    recipe: str, cache_dir: str | Path | None = None, releases: Path = RELEASED
) -> Path:
    """Copy the cached build of ``recipe`` into the package's released builds, with checksums."""
    from retro_ray.zoo.build import MANIFEST, cache_root
    from retro_ray.zoo.recipes import get_recipe

    key = get_recipe(recipe).key
    build = cache_root(cache_dir) / key
    if not (build / MANIFEST).is_file():
        raise FileNotFoundError(
            f"no finished build {key} in {build.parent}: run `retro-ray zoo build --recipe "
            f"{recipe} --no-release` first"
        )
    target = releases / key
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(build, target)
    write_checksums(target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ship a cached zoo build inside the package")
    p.add_argument("recipe")
    p.add_argument("--cache-dir", default=None, help="default: $RETRO_RAY_CACHE/zoo")
    args = p.parse_args(argv)
    print(make_release(args.recipe, args.cache_dir), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
