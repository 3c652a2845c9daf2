"""Durable file writes: small files written atomically, and the directory syncs that make new
names last through a crash. Used for key files and for artifacts on local disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` durable: a new name (a rename, a link) only
    survives a crash once the directory itself reached the disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes, *, replace: bool) -> None:
    """Put `data` at `path` all at once, readable and writable by the owner only (0600).

    The bytes go to a temporary file in the same directory, are synced, and the file is then
    renamed over `path` (`replace`) or hard-linked to it. A link never overwrites: two
    processes racing to create the same file cannot both win, and the loser's data is dropped.
    Either way a reader sees the old file or the complete new one, never part of one.

    Raises:
        FileExistsError: `replace` is off and `path` exists; nothing was changed.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    fsync_dir(path.parent)
