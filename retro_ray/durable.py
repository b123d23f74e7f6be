"""Durable files: fsync what a crash must not lose, including the directory entries.

``os.replace`` makes a write atomic (readers see the old file or the new one), not durable: after a
power cut or a kernel crash the new file's blocks, or the rename itself, may never have reached the
disk, and a "finished" episode or checkpoint is gone (or present with garbage) on restart. What is
needed, in order: fsync the file's data, rename it into place, fsync the directory holding the
name (the rename lives there), and fsync the parent of every directory that was just created.

Plain ``os`` calls, no Ray. Filesystems that cannot fsync a directory (some network mounts answer
``EINVAL``) are tolerated: there the mount's own semantics decide.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

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
