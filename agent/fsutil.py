"""Atomic, private file writes: temp file in the same directory, fsync, rename, directory fsync."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from agent.errors import StoreError

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def write_target(path: Path) -> Path:
    """Where a write to ``path`` must land: through a symlink to its target, so it stays a link."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) 0700 whatever the umask; leave an existing dir's mode alone."""
    if path.is_dir():
        return
    # Every missing ancestor too: mkdir(parents=True) makes them with the umask's mode, which
    # under umask 0 is world-writable, and a writable parent lets anyone swap the private dir.
    missing = []
    for ancestor in (path, *path.parents):
        if ancestor.is_dir():
            break
        missing.append(ancestor)
    try:
        for directory in reversed(missing):
            try:
                directory.mkdir(mode=PRIVATE_DIR)
            except FileExistsError:
                if not directory.is_dir():
                    raise
                continue  # made by someone else meanwhile: its mode is theirs
            os.chmod(directory, PRIVATE_DIR)
    except OSError as exc:
        raise StoreError(f"cannot create directory {path}: {exc.strerror}") from exc


def fsync_dir(path: Path) -> None:
    # Without it a crash after rename can leave the old directory entry (POSIX only).
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a part."""
    target = write_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc
    with contextlib.suppress(OSError):
        fsync_dir(target.parent)


def read_bytes(path: Path, limit: int) -> bytes | None:
    """The file's bytes (at most ``limit`` + 1), or None when it does not exist."""
    try:
        with open(path, "rb") as fh:
            return fh.read(limit + 1)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc


def stat_signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime_ns, size): what changes whenever anyone writes the file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
