"""ALFWorld game files: where they are, which task id and split each has, and how archives unpack.

A game is one ``game.tw-pddl`` file (JSON: ``pddl_domain``, ``grammar``, ``pddl_problem``,
``solvable``, ``walkthrough``) in a folder ``<split folder>/<task>/<trial>/``, e.g.
``valid_unseen/pick_clean_then_place_in_recep-Bowl-None-Cabinet-10/trial_T20190909_061130_844814``.
Those three folder names are the task id, so an archive and its unpacked copy give the same ids.

``data_path`` may be a folder of games (searched recursively; read in place, never written to), a
``.tgz`` archive of games, or a folder of such archives. The default is ALFWorld's own data folder,
``$ALFWORLD_DATA/json_2.1.1`` (``~/.cache/alfworld/json_2.1.1`` when the variable is unset, the
rule of the ``alfworld`` package itself), where ``retro-ray data fetch alfworld`` and
``alfworld-download`` put the game files. Archives are listed without unpacking; one is unpacked,
once, only when one of its games is played (see ``unpack``).

Task ids of a folder: a split folder (``train``, ``valid_seen``, ``valid_unseen``) three levels
above a game file counts wherever ``data_path`` points (``json_2.1.1``, ``json_2.1.1/valid_seen``
or one task folder inside it all give ``valid_seen/<task>/<trial>``); other layouts are named by
their folders below ``data_path``.

Splits, by the split folder of the task id:

* ``valid_unseen`` (ALFWorld's out-of-distribution evaluation set, the 134 games ReAct, Reflexion
  and Retroformer report): ``test``;
* ``valid_seen`` (in-distribution evaluation): ``validation``;
* ``train``: ``validation`` when ``split_of(task_id)`` says so (about 10%), otherwise ``train``;
* any other layout: ``split_of(task_id)`` (80 / 10 / 10).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from retro_ray.envs.base import split_of

GAME_FILE = "game.tw-pddl"
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz")
GAMES_FOLDER = "json_2.1.1"
"""The folder of ALFWorld's game files inside its data folder (``$ALFWORLD_DATA``)."""
SPLIT_FOLDERS = {"valid_unseen": "test", "valid_seen": "validation", "train": "train"}
"""ALFWorld's split folders and the split each maps to (``train`` also gives ``validation``)."""
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)


class AlfworldDataError(ValueError):
    """Missing or malformed ALFWorld data; the message names the path and what is wrong. A
    ValueError, so the command line reports it in one line as a configuration error."""


@dataclass(frozen=True)
class GameRef:
    """One game: its task id and split, and where its file lives (a folder or an archive)."""

    task_id: str
    split: str
    source: Path  # a folder of games, or an archive
    member: str  # the game file's path inside ``source``

    @property
    def task_type(self) -> str:
        """``pick_clean_then_place_in_recep`` etc. from the task folder name ('' if unknown)."""
        kind = self.task_id.split("/")[-2].split("-")[0]
        return kind if kind in TASK_TYPES else ""


def alfworld_data_root() -> Path:
    """ALFWorld's data folder by the ``alfworld`` package's own rule: ``$ALFWORLD_DATA``, else
    ``~/.cache/alfworld`` (so data fetched by either tool serves both)."""
    if env := os.environ.get("ALFWORLD_DATA"):
        return Path(env).expanduser()
    return Path.home() / ".cache" / "alfworld"


def default_data_path() -> Path:
    """``<ALFWorld data folder>/json_2.1.1``: where ``retro-ray data fetch alfworld`` puts the
    games."""
    return alfworld_data_root() / GAMES_FOLDER


def cache_root() -> Path:
    """Where archives unpack: ``$RETRO_RAY_CACHE/alfworld``, else ``~/.cache/retro_ray/alfworld``."""
    if env := os.environ.get("RETRO_RAY_CACHE"):
        return Path(env).expanduser() / "alfworld"
    return Path.home() / ".cache" / "retro_ray" / "alfworld"


def split_for(task_id: str) -> str:
    split = SPLIT_FOLDERS.get(task_id.split("/")[0])
    if split is None:
        return split_of(task_id)
    if split == "train":
        return "validation" if split_of(task_id) == "validation" else "train"
    return split


def folder_task_id(game: Path, root: Path) -> str:
    """The task id of ``game`` (a file under the folder ``root``): its last three folders when the
    first of them is an ALFWorld split folder, even above ``root``; otherwise its folders below
    ``root``, so a custom layout's ids do not depend on where the folder lives."""
    absolute = task_id_of(game)
    if absolute.split("/")[0] in SPLIT_FOLDERS:
        return absolute
    return task_id_of(game.relative_to(root))


def task_id_of(member: str | Path) -> str:
    """The last three folders above a game file: ``<split folder>/<task>/<trial>``."""
    return "/".join(Path(member).parent.parts[-3:])


def index_games(data_path: str | os.PathLike[str] | None) -> tuple[GameRef, ...]:
    """Every game under ``data_path`` (see the module docstring), sorted by task id."""
    path = Path(data_path).expanduser() if data_path is not None else default_data_path()
    if not path.exists():
        if data_path is None:
            raise AlfworldDataError(
                f"no ALFWorld data at the default path {path}: run `retro-ray data fetch "
                "alfworld` (ALFWorld's game files into $ALFWORLD_DATA, else ~/.cache/alfworld), "
                f"or pass --data PATH (env.data_path): a folder of {GAME_FILE} games, a .tgz "
                "archive of them, or a folder of such archives"
            )
        raise AlfworldDataError(
            f"no ALFWorld data at {path}; pass --data (env.data_path): a folder of "
            f"{GAME_FILE} games, a .tgz archive of them, or a folder of such archives (or run "
            "`retro-ray data fetch alfworld` and drop --data)"
        )
    path = path.resolve()
    stat = path.stat()
    return _index(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _index(path: Path, mtime_ns: int, size: int) -> tuple[GameRef, ...]:
    # mtime and size are part of the key so that a changed file is listed again.
    if path.is_file():
        if not path.name.endswith(ARCHIVE_SUFFIXES):
            raise AlfworldDataError(
                f"{path} is neither a folder of {GAME_FILE} games nor a .tgz archive of them"
            )
        refs = _archive_games(path)
    elif any(path.rglob(GAME_FILE)):
        refs = [_folder_ref(f, path) for f in path.rglob(GAME_FILE)]
    else:
        archives = sorted(p for p in path.iterdir() if p.name.endswith(ARCHIVE_SUFFIXES))
        if not archives:
            raise AlfworldDataError(f"no {GAME_FILE} files and no .tgz archives in {path}")
        refs = [ref for archive in archives for ref in _archive_games(archive)]
    seen: dict[str, GameRef] = {}
    for ref in refs:
        if ref.task_id in seen:
            first = seen[ref.task_id]
            raise AlfworldDataError(
                f"game {ref.task_id!r} appears twice: {first.source}/{first.member} and "
                f"{ref.source}/{ref.member}"
            )
        seen[ref.task_id] = ref
    return tuple(sorted(seen.values(), key=lambda r: r.task_id))


def _ref(member: str, source: Path) -> GameRef:
    task_id = task_id_of(member)
    return GameRef(task_id=task_id, split=split_for(task_id), source=source, member=member)


def _folder_ref(game: Path, root: Path) -> GameRef:
    task_id = folder_task_id(game, root)
    member = str(game.relative_to(root))
    return GameRef(task_id=task_id, split=split_for(task_id), source=root, member=member)


def _archive_games(archive: Path) -> list[GameRef]:
    try:
        with tarfile.open(archive) as tar:
            names = [n for n in tar.getnames() if Path(n).name == GAME_FILE]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AlfworldDataError(f"cannot read the archive {archive}: {exc}") from exc
    if not names:
        raise AlfworldDataError(f"the archive {archive} holds no {GAME_FILE} files")
    return [_ref(name, archive) for name in names]


def game_path(ref: GameRef) -> Path:
    """The game's file on disk, unpacking its archive first if needed."""
    root = ref.source if ref.source.is_dir() else unpack(ref.source)
    return root / ref.member


def unpack(archive: Path) -> Path:
    """The folder holding the unpacked ``archive``: ``cache_root()/<first 16 hex of its SHA-256>``.

    Idempotent and atomic: the archive is unpacked into a temporary folder beside the target and
    renamed into place, so a reader never sees half an archive, and when two processes race the
    second one's copy is discarded. The copy (never the source) gets alfworld's ``traj_data.json``
    stub beside each game, so alfworld's own ``AlfredTWEnv`` can read it too.
    """
    stat = archive.stat()
    return _unpack(archive, stat.st_mtime_ns, stat.st_size, cache_root())


@lru_cache(maxsize=8)
def _unpack(archive: Path, mtime_ns: int, size: int, root: Path) -> Path:
    digest = hashlib.sha256()
    with archive.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    target = root / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        for game in scratch.rglob(GAME_FILE):
            kind = GameRef(task_id_of(game), "", archive, "").task_type
            (game.parent / "traj_data.json").write_text(json.dumps({"task_type": kind}))
        try:
            scratch.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AlfworldDataError(f"cannot unpack {archive} into {target}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_game(path: Path) -> dict:
    """A game file's JSON, checked for the keys the environment needs."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AlfworldDataError(f"cannot read the ALFWorld game {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise AlfworldDataError(f"{path} is not an ALFWorld game (not a JSON object)")
    missing = [k for k in ("pddl_domain", "grammar", "pddl_problem") if k not in data]
    if missing:
        raise AlfworldDataError(f"{path} is not an ALFWorld game (missing {', '.join(missing)})")
    return data
