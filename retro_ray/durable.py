"""Durable files: fsync what a crash must not lose, including the directory entries.

``os.replace`` makes a write atomic (readers see the old file or the new one), not durable: after a
power cut or a kernel crash the new file's blocks, or the rename itself, may never have reached the
disk, and a "finished" episode or checkpoint is gone (or present with garbage) on restart. What is
needed, in order: fsync the file's data, rename it into place, fsync the directory holding the
name (the rename lives there), and fsync the parent of every directory that was just created.

Plain ``os`` calls, no Ray. Filesystems that cannot fsync a directory (some network mounts answer
``EINVAL``) are tolerated: there the mount's own semantics decide.

JSON-lines logs (``metrics.jsonl``, ``gates.jsonl``) get the same care:
``append_jsonl`` fsyncs each record and first repairs a torn last line a crash left behind, and
``read_jsonl`` skips (with a warning) a torn last line instead of failing the resume.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EISDIR}


def fsync_file(path: str | Path) -> None:
    """Flush a file's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p`` whose new directories survive a crash: each one created is fsynced into its
    parent. Cheap when the directory exists already (one ``stat``)."""
    path = Path(path)
    if path.is_dir():
        return path
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)
    return path


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root`` (deepest first), then ``root`` itself: a
    directory written file by file (a checkpoint) before it is renamed into place."""
    root = Path(root)
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(Path(directory) / name)
        fsync_dir(directory)


def replace_durably(source: str | Path, target: str | Path) -> None:
    """``os.replace`` then fsync the target's directory: the new name is on disk when this
    returns. The source's data must be fsynced already (``fsync_file`` or ``fsync_tree``)."""
    os.replace(source, target)
    fsync_dir(Path(target).parent)


# -- JSON lines that survive a crash mid-append -------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, oldest first ([] when it does not exist).

    A torn last line (the process died mid-append) is skipped with a warning: the record it
    held never finished, and resuming must not fail on it. A bad line before the last is not a
    torn write but damage, and raises ``ValueError`` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                logger.warning("%s: skipping its torn last line %d (%s)", path, number, exc.msg)
                continue
            raise ValueError(
                f"{path}: line {number} is not JSON ({exc.msg}) and is not the last line, so it "
                "is damage rather than an interrupted write; repair or delete that line"
            ) from None
    return records


def append_jsonl(path: str | Path, record: dict[str, Any], *, fsync: bool = True) -> None:
    """Append ``record`` as one line, fsynced. A torn last line left by a crash is cut first (a
    complete record missing only its newline gets the newline), so the new record never glues
    onto a fragment and becomes unreadable itself."""
    path = Path(path)
    line = json.dumps(record) + "\n"
    with path.open("a+b") as f:
        _repair_tail(f)
        f.write(line.encode())
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def _repair_tail(f: Any) -> None:
    """Make an append-mode file end at a line boundary (see ``append_jsonl``)."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(max(0, end - 1))
    if f.read(1) == b"\n":
        return
    start = max(0, end - _TAIL_PROBE)
    f.seek(start)
    tail = f.read()
    cut = tail.rfind(b"\n")
    while cut < 0 and start > 0:  # a last line longer than the probe: look further back
        start = max(0, start - _TAIL_PROBE)
        f.seek(start)
        tail = f.read()
        cut = tail.rfind(b"\n")
    last = tail[cut + 1 :]
    try:
        json.loads(last)
        f.write(b"\n")  # complete, only its newline was lost
    except ValueError:
        logger.warning(
            "%s: cutting a torn last line of %d bytes before appending", f.name, len(last)
        )
        f.truncate(start + cut + 1)


_TAIL_PROBE = 1 << 16
