"""Atomic, private file writes: temp file in the same directory, fsync, rename, directory fsync."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import time
from collections.abc import Collection
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


Signature = tuple[int, int, int]


def atomic_write(path: Path, data: bytes, mode: int = PRIVATE_FILE, *,
                 temp_prefix: str | None = None, temp_suffix: str = ".tmp") -> Signature:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a part.

    The temp file is ``temp_prefix`` + random + ``temp_suffix`` in the same directory
    (default ``.<name>.XXXXXXXX.tmp``; another CLI's pattern, such as Codex's ``.auth-XXXXXX``,
    when given). Returns the ``stat_signature`` of the file put in place, taken from the file
    itself: a ``stat`` of the path afterwards could already see someone else's file."""
    target = write_target(path)
    prefix = temp_prefix if temp_prefix is not None else f".{target.name}."
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=temp_suffix, dir=target.parent)
    except OSError as exc:  # a directory we may not write (or a full inode table): no temp
        raise StoreError(_write_error(target, exc)) from exc
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(_write_error(target, exc)) from exc
    with contextlib.suppress(OSError):
        fsync_dir(target.parent)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


_WRITE_HINTS = {
    errno.EISDIR: "a directory is in the way: move it away",
    errno.ENOTDIR: "a part of the path is a file, not a directory: fix the path",
    errno.EACCES: "fix the permissions of the file and its directory (u+rwx)",
    errno.EPERM: "fix the permissions of the file and its directory (u+rwx)",
    errno.ENOSPC: "the disk is full: free some space",
    getattr(errno, "EDQUOT", -1): "over the disk quota: free some space",
    errno.EROFS: "the filesystem is read-only: choose a writable location",
}


def _write_error(target: Path, exc: OSError) -> str:
    hint = _WRITE_HINTS.get(exc.errno or 0)
    return f"cannot write {target}: {exc.strerror or exc}" + (f"; {hint}" if hint else "")


def read_bytes(path: Path, limit: int) -> bytes | None:
    """The file's bytes (at most ``limit`` + 1), or None when it does not exist.

    Only a regular file is read: a FIFO put where a credential file belongs would otherwise
    block the reader forever, and a device (``/dev/zero``) never ends.
    """
    try:
        # Non-blocking open: opening a FIFO with no writer returns at once instead of hanging.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(f"cannot read {path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit + 1)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words for a message."""
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return words
    return "an unusual file"


def _not_regular(path: Path, mode: int) -> StoreError:
    return StoreError(f"cannot use {path}: not a regular file ({kind_of(mode)}); move it "
                      "away, credsync needs a plain file there")


def open_regular(path: Path, flags: int, mode: int = PRIVATE_FILE,
                 follow: bool = False) -> int:
    """Open ``path`` as a regular file and return the descriptor, or raise StoreError (one line
    naming the file and the fix). FileNotFoundError passes through when ``flags`` lack O_CREAT.

    The open never blocks: a FIFO with no peer would hang the open itself (a read-only open
    waits for a writer), so it is opened O_NONBLOCK, checked with fstat and refused, and the
    flag is cleared again for a regular file. Without ``follow`` a symlink is refused too
    (O_NOFOLLOW): credsync's own state and lock files are never links, and following one lets
    whoever made it choose where we write.
    """
    extra = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        extra |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | extra, mode)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if flags & os.O_CREAT:
            raise StoreError(f"cannot use {path}: {exc.strerror}; check that its directory "
                             "exists and is a directory") from exc
        raise FileNotFoundError(exc.errno, exc.strerror, str(path)) from exc
    except OSError as exc:
        raise _open_error(path, exc, follow) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        _clear_nonblock(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _clear_nonblock(fd: int) -> None:
    # Meaningless for a regular file today, but whoever reads the descriptor expects blocking I/O.
    # Only where it was set: Windows has no O_NONBLOCK (and set_blocking there is for pipes).
    if hasattr(os, "O_NONBLOCK"):
        os.set_blocking(fd, True)


def _open_error(path: Path, exc: OSError, follow: bool) -> StoreError:
    """One line for an open that failed: what is wrong with ``path`` and what to do."""
    if exc.errno == errno.ELOOP:
        if not follow and os.path.islink(path):
            return StoreError(f"cannot use {path}: it is a symlink, which credsync does not "
                              "follow here; remove it (credsync recreates the file)")
        return StoreError(f"cannot use {path}: it is a symlink loop; remove the link or "
                          "point it at a file")
    if exc.errno == errno.ENXIO:  # O_WRONLY|O_NONBLOCK on a FIFO with no reader
        return StoreError(f"cannot use {path}: not a regular file (a FIFO); move it away, "
                          "credsync needs a plain file there")
    if exc.errno == errno.EISDIR:
        return StoreError(f"cannot use {path}: not a regular file (a directory); move it "
                          "away, credsync needs a plain file there")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(f"cannot use {path}: permission denied; run `chmod u+rw {path}` "
                          "(and u+rwx on its directory) or remove it")
    return StoreError(f"cannot use {path}: {exc.strerror or exc}")


def stat_signature(path: Path) -> Signature | None:
    """(inode, mtime_ns, size): what changes whenever anyone writes the file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# --- who else could touch a file we write ---------------------------------------------------
#
# The rule (OpenSSH's StrictModes, applied to the directory a file is renamed into):
# - a directory is safe when it is owned by us or by root, and is not writable by group or
#   others, unless it is sticky AND ours (others may then add entries, never rename or remove
#   ours). A sticky directory of someone else's (/tmp for a normal user) is refused: anyone can
#   plant the file's name there first.
# - an existing entry must be a regular file of ours, or a symlink (owned by us or root) to a
#   regular file of ours or to nothing yet; the directory of the link and the directory of its
#   target must both be safe.
# Only the immediate directories are checked, not every ancestor. With the directories safe,
# nobody else can swap the entry between the check and the write.
# Not POSIX (Windows): ownership is ACLs, not modes; nothing is checked here.


def _our_uid() -> int | None:
    return os.geteuid() if hasattr(os, "geteuid") else None


def unsafe_dir_reason(directory: Path) -> str | None:
    """Why other users could replace a file written into ``directory``, or None if they cannot."""
    uid = _our_uid()
    if uid is None:
        return None
    try:
        st = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None  # created 0700 (by ensure_private_dir) when the file is written
    except OSError as exc:
        return f"cannot inspect its directory {directory}: {exc.strerror or exc}"
    if st.st_uid not in (uid, 0):
        return (f"its directory {directory} is owned by uid {st.st_uid}, not by you (uid {uid}); "
                "choose a directory of your own")
    mode = stat.S_IMODE(st.st_mode)
    shared = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and not (mode & stat.S_ISVTX and st.st_uid == uid):
        return (f"its directory {directory} is writable by other users (mode {mode:04o}); "
                f"run `chmod go-w {directory}` or choose a private directory")
    return None


def unsafe_write_reason(path: Path) -> str | None:
    """Why writing ``path`` could hand its content to another user, or None when it is safe."""
    uid = _our_uid()
    if uid is None:
        return None
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return unsafe_dir_reason(path.parent)
    except OSError as exc:
        return f"cannot inspect it: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        return _unsafe_link_reason(path, st.st_uid, uid)
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file; remove it or point the sink elsewhere"
    if st.st_uid != uid:
        return (f"it is owned by uid {st.st_uid}, not by you (uid {uid}); remove it or point "
                "the sink elsewhere")
    return unsafe_dir_reason(path.parent)


def _unsafe_link_reason(path: Path, link_uid: int, uid: int) -> str | None:
    if link_uid not in (uid, 0):
        return (f"it is a symlink owned by uid {link_uid}, not by you (uid {uid}); remove it "
                "or point the sink elsewhere")
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        return f"it is a symlink to {target}, which cannot be inspected: {exc.strerror or exc}"
    if st is not None and not stat.S_ISREG(st.st_mode):
        return (f"it is a symlink to {target}, which is not a regular file; remove the link or "
                "point the sink elsewhere")
    if st is not None and st.st_uid != uid:
        return (f"it is a symlink to {target}, a file owned by uid {st.st_uid}, not by you "
                f"(uid {uid}); remove the link or point the sink at a file of your own")
    return unsafe_dir_reason(path.parent) or unsafe_dir_reason(target.parent)


# What atomic_write's mkstemp names look like: "." + the target's name + "." + 8 random
# characters + ".tmp". A writer killed between mkstemp and rename leaves one behind.
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temps(directory: Path, older_than_s: float,
                       targets: Collection[str] | None = None,
                       now: float | None = None) -> list[Path]:
    """Remove the temp files interrupted atomic writes left in ``directory`` (for ``targets``
    only, when given); only those older than ``older_than_s``, since a younger one may be a
    write in progress in another process. Returns what was removed; never raises."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or (targets is not None and match["target"] not in targets):
            continue
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > older_than_s:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def append_line(path: Path, line: str) -> int:
    """Append ``line`` and a newline to a private log (created 0600 in a private dir) and
    fsync it; the file's size after. Never follows a FIFO or other special file (O_NONBLOCK
    keeps a FIFO from blocking the open; it is then refused)."""
    ensure_private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(f"cannot write {path}: not a regular file; remove it")
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
        return os.fstat(fd).st_size
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
