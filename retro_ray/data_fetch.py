"""``retro-ray data fetch hotpotqa|alfworld``: the benchmarks' data, from their official public
sources, into the user's cache, where the loaders look by default. A clone of the repository
needs nothing beside it.

* **hotpotqa**: HotPotQA's dev set in the distractor setting (``hotpot_dev_distractor_v1.json``,
  7,405 questions, CC BY-SA 4.0) from the HotPotQA project's download server, into
  ``$RETRO_RAY_CACHE/data/hotpotqa`` (else ``~/.cache/retro_ray/data/hotpotqa``).
* **alfworld**: ALFWorld's game files (``json_2.1.2_tw-pddl.zip``, MIT: the release asset
  ``alfworld-download`` fetches them from, unpacking to ``json_2.1.1/<split>/<task>/<trial>/``),
  into ALFWorld's own data folder, ``$ALFWORLD_DATA`` (else ``~/.cache/alfworld``), as the
  ``alfworld`` package does.

Nothing lands in place unchecked: a download goes to a temporary file beside its destination,
its size must match the server's ``Content-Length``, and the data must load (every HotPotQA
question parses in the official layout; no ALFWorld split folder holds fewer games than ALFWorld
publishes: 3,553 train, 140 valid_seen, 134 valid_unseen). Neither project publishes checksums of
these files, so the SHA-256 of what was fetched is appended to a log beside it
(``*.sources.jsonl``) for audit, with the source and the time. A failed check leaves any earlier
copy untouched.

``--source`` replaces the official URL: another URL (``http``, ``https``, ``file://``) or a local
path; for ALFWorld also a ``.tgz`` archive or a folder of games in ALFWorld's layout (useful on
machines without internet, e.g. ``--source /mnt/mirror/alfworld/valid_unseen.tgz``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retro_ray.envs.benchmarks import alfworld_data, hotpotqa_data

HOTPOTQA_URL = "http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json"
ALFWORLD_URL = "https://github.com/alfworld/alfworld/releases/download/0.4.0/json_2.1.2_tw-pddl.zip"
ALFWORLD_PUBLISHED_GAMES = {"train": 3553, "valid_seen": 140, "valid_unseen": 134}
"""Games per split folder, as ALFWorld's documentation gives them (a split with fewer is
incomplete)."""
DATASETS = ("hotpotqa", "alfworld")
TIMEOUT_S = 60.0
"""Socket timeout of a download (per read, not for the whole file)."""
CHUNK = 1 << 20


class DataFetchError(ValueError):
    """A fetch that cannot complete; the message names the source, the check and what to do. A
    ValueError, so the command line reports it in one line."""


@dataclass
class FetchResult:
    dataset: str
    path: str  # what the loaders read by default (or --data, when --dest is not the default)
    source: str
    bytes: int
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_dest(dataset: str) -> Path:
    """Where the loaders look by default for ``dataset``."""
    if dataset == "hotpotqa":
        return hotpotqa_data.data_dir()
    if dataset == "alfworld":
        return alfworld_data.alfworld_data_root()
    raise DataFetchError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")


def fetch(
    dataset: str,
    dest: str | os.PathLike[str] | None = None,
    source: str | None = None,
    log: Callable[[str], None] | None = None,
) -> FetchResult:
    """Fetch ``dataset`` from ``source`` (default: the official URL) into ``dest`` (default: where
    the loaders look)."""
    folder = Path(dest).expanduser() if dest is not None else default_dest(dataset)
    say = log or _stderr
    if dataset == "hotpotqa":
        return fetch_hotpotqa(folder, source or HOTPOTQA_URL, say)
    return fetch_alfworld(folder, source or ALFWORLD_URL, say)


# ---- HotPotQA ---------------------------------------------------------------------------------


def fetch_hotpotqa(dest: Path, source: str, log: Callable[[str], None]) -> FetchResult:
    """The dev set as one checked JSON file, ``dest/hotpot_dev_distractor_v1.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / hotpotqa_data.OFFICIAL_DEV_FILE
    with tempfile.TemporaryDirectory(prefix=".fetching-", dir=dest) as scratch:
        part = Path(scratch) / target.name
        size, digest = _retrieve(source, part, log)
        try:
            data = hotpotqa_data.load_hotpotqa(part)
        except hotpotqa_data.HotpotQADataError as exc:
            raise DataFetchError(f"{source} is not a HotPotQA question file: {exc}") from None
        if data.layout != "official":
            raise DataFetchError(
                f"{source} is in the {data.layout} layout, not HotPotQA's official distractor "
                "layout that `data fetch hotpotqa` stores; read such a file with --data PATH"
            )
        part.replace(target)
    result = FetchResult(
        "hotpotqa", str(target), source, size, digest, {"questions": len(data.questions)}
    )
    _record_provenance(target, result)
    log(f"hotpotqa: {len(data.questions)} questions in {target}")
    return result


# ---- ALFWorld ---------------------------------------------------------------------------------


def fetch_alfworld(dest: Path, source: str, log: Callable[[str], None]) -> FetchResult:
    """ALFWorld's games under ``dest/json_2.1.1/<split folder>/``. Each split folder the source
    holds replaces the one in ``dest`` whole (after the checks); other split folders stay, so
    archives of single splits can be fetched one after another."""
    dest.mkdir(parents=True, exist_ok=True)
    games_root = dest / alfworld_data.GAMES_FOLDER
    with tempfile.TemporaryDirectory(prefix=".fetching-", dir=dest) as scratch_dir:
        scratch = Path(scratch_dir)
        raw = scratch / "raw"
        size, digest = _alfworld_source(source, scratch, raw, log)
        staged = scratch / alfworld_data.GAMES_FOLDER
        counts, skipped = _stage_games(raw, staged, source)
        _check_counts(counts, source)
        if skipped:
            log(f"alfworld: skipped {skipped} games outside ALFWorld's split folders")
        games_root.mkdir(exist_ok=True)
        for split in sorted(counts):
            _swap_in(staged / split, games_root / split, scratch)
    total = sum(counts.values())
    details = {"games": dict(sorted(counts.items())), "skipped": skipped}
    result = FetchResult("alfworld", str(games_root), source, size, digest, details)
    _record_provenance(games_root, result)
    log(f"alfworld: {total} games ({_describe(counts)}) in {games_root}")
    return result


def _alfworld_source(source: str, scratch: Path, raw: Path, log: Callable[[str], None]):
    """Unpack (or copy) ``source`` into ``raw``; the bytes and SHA-256 of what was read."""
    local = _local_path(source)
    if local is not None and local.is_dir():  # keep its name: it may be the split folder
        shutil.copytree(local, raw / local.resolve().name, symlinks=False)
        return _tree_size(raw), ""
    if local is not None:
        if not local.is_file():
            raise DataFetchError(f"the source {local} does not exist")
        archive = local
        size, digest = _file_digest(local)
    else:
        archive = scratch / (Path(urllib.parse.urlparse(source).path).name or "download")
        size, digest = _retrieve(source, archive, log)
    _unpack_archive(archive, raw, source)
    return size, digest


def _unpack_archive(archive: Path, raw: Path, source: str) -> None:
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.namelist():  # zipfile drops '..' and roots; refuse them loudly
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DataFetchError(f"{source}: unsafe path {member!r} in the archive")
                zipped.extractall(raw)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(raw, filter="data")
        else:
            raise DataFetchError(f"{source} is neither a zip nor a tar archive of ALFWorld games")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise DataFetchError(f"cannot unpack {source}: {exc}") from exc


def _stage_games(raw: Path, staged: Path, source: str) -> tuple[Counter[str], int]:
    """Move every game's trial folder to ``staged/<split folder>/<task>/<trial>``; games per
    split folder, and how many games lay outside ALFWorld's split folders (left out)."""
    games = sorted(raw.rglob(alfworld_data.GAME_FILE))
    if not games:
        raise DataFetchError(f"{source} holds no {alfworld_data.GAME_FILE} files")
    counts: Counter[str] = Counter()
    skipped = 0
    for game in games:
        task_id = alfworld_data.folder_task_id(game, raw)
        split_folder = task_id.split("/")[0]
        if task_id.count("/") != 2 or split_folder not in alfworld_data.SPLIT_FOLDERS:
            skipped += 1
            continue
        target = staged / task_id
        if target.exists():
            raise DataFetchError(f"{source}: the game {task_id} appears twice")
        target.parent.mkdir(parents=True, exist_ok=True)
        game.parent.rename(target)
        counts[split_folder] += 1
    if not counts:
        raise DataFetchError(
            f"{source}: none of its {len(games)} games is in ALFWorld's layout "
            "(<train|valid_seen|valid_unseen>/<task>/<trial>/game.tw-pddl); read other "
            "layouts with --data PATH"
        )
    return counts, skipped


def _check_counts(counts: Counter[str], source: str) -> None:
    wrong = {s: n for s, n in counts.items() if n < ALFWORLD_PUBLISHED_GAMES[s]}
    if wrong:
        found = ", ".join(
            f"{s}: {n} (ALFWorld publishes {ALFWORLD_PUBLISHED_GAMES[s]})"
            for s, n in sorted(wrong.items())
        )
        raise DataFetchError(
            f"{source} holds an incomplete or different ALFWorld split: {found}; nothing was "
            "replaced. Fetch again, or read a partial copy with --data PATH"
        )


def _swap_in(new: Path, old: Path, scratch: Path) -> None:
    """Replace ``old`` by ``new`` with two renames (the earlier copy goes to ``scratch``, which is
    removed afterwards), so a reader never sees half a split."""
    if old.exists():
        old.rename(scratch / f"old-{old.name}")
    new.rename(old)


def _describe(counts: Counter[str]) -> str:
    return ", ".join(f"{split} {n}" for split, n in sorted(counts.items()))


# ---- transfer ---------------------------------------------------------------------------------


def _local_path(source: str) -> Path | None:
    """The path of a local source (a plain path or a ``file://`` URL); None for a remote URL."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme:
        raise DataFetchError(f"unsupported source {source!r}: use http(s)://, file:// or a path")
    return Path(source).expanduser()


def _retrieve(source: str, target: Path, log: Callable[[str], None]) -> tuple[int, str]:
    """Copy or download ``source`` to ``target``; its size and SHA-256. A download must deliver
    the ``Content-Length`` the server announced."""
    local = _local_path(source)
    if local is not None:
        if not local.is_file():
            raise DataFetchError(f"the source {local} does not exist or is not a file")
        shutil.copyfile(local, target)
        return _file_digest(target)
    log(f"downloading {source}")
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(source, timeout=TIMEOUT_S) as response:
            expected = response.headers.get("Content-Length")
            expected_size = int(expected) if expected and expected.isdigit() else None
            reported = time.monotonic()
            with target.open("wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    if time.monotonic() - reported > 10:
                        reported = time.monotonic()
                        log(
                            f"  {_mb(size)}"
                            + (f" of {_mb(expected_size)}" if expected_size else "")
                        )
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DataFetchError(
            f"cannot download {source}: {exc}; check the connection (proxies come from "
            "http_proxy/https_proxy), or download it elsewhere and pass --source PATH"
        ) from exc
    if expected_size is not None and size != expected_size:
        raise DataFetchError(
            f"{source}: got {size} bytes, the server announced {expected_size}; the download "
            "was cut short: run the command again"
        )
    log(f"  {_mb(size)}, sha256 {digest.hexdigest()}")
    return size, digest.hexdigest()


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _record_provenance(path: Path, result: FetchResult) -> None:
    """Append what was fetched, from where and when to ``<path>.sources.jsonl``."""
    record = {**result.to_dict(), "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with path.with_name(path.name + ".sources.jsonl").open("a") as log:
        log.write(json.dumps(record) + "\n")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
