"""Who holds a lock directory: an owner mark on credsync's own locks, so that a lock left by a
credsync process that died (SIGKILL, power cut of the process, OOM) is freed at once instead of
blocking every CLI session for the lock's whole stale time (60 s for a refresh lock).

The mark is an extended attribute of the lock directory (the CLI ignores it; ``rmdir`` still
works): ``<boot id> <pid namespace> <pid> <start time>``. A marked lock is an orphan only when
all of these hold: it was made during this boot and in this pid namespace (a container, another
machine sharing the directory: never judged), and no process with that pid and start time runs
now (a reused pid has another start time). Anything else, an unmarked lock above all (the CLI's),
is left to the ordinary stale rule. Linux only; elsewhere nothing is marked and nothing is freed
early.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

ATTR = "user.credsync.owner"


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def _host() -> str | None:
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot.strip()} {namespace}" if boot else None


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None when it is gone or a zombie."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may hold spaces: the fields after it start past its last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def tag(pid: int | None = None) -> bytes | None:
    if pid is None or pid == os.getpid():
        return _own_tag(os.getpid())
    return _tag(pid)


@functools.lru_cache(maxsize=1)
def _own_tag(pid: int) -> bytes | None:
    # Our own start time never changes: read once per process (keyed by pid, so that a forked
    # child reads its own), not on every lock of every write.
    return _tag(pid)


def _tag(pid: int) -> bytes | None:
    host = _host()
    start = _start_time(pid)
    if host is None or start is None:
        return None
    return f"{host} {pid} {start}".encode()


def mark(path: Path, value: bytes | None) -> None:
    """Mark ``path`` (a lock directory just made) with ``tag()``, computed before the mkdir so
    that a kill between the two is as unlikely as can be; best effort. A lock left unmarked
    falls back to the stale rule."""
    if value is None or not hasattr(os, "setxattr"):
        return
    with contextlib.suppress(OSError):
        os.setxattr(path, ATTR, value)


def mark_of(path: Path) -> bytes | None:
    """The owner mark on ``path``, if any."""
    return _owner(path)


def _owner(path: Path) -> bytes | None:
    if not hasattr(os, "getxattr"):
        return None
    try:
        return os.getxattr(path, ATTR)
    except OSError:
        return None


def is_orphaned(value: bytes | None) -> bool:
    host = _host()
    if value is None or host is None:
        return False
    parts = value.decode(errors="replace").rsplit(" ", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    return _start_time(int(parts[1])) != parts[2]


def remove_if_orphaned(path: Path) -> bool:
    """Remove the lock ``path`` when its marked owner is dead; True when it was removed."""
    value = _owner(path)
    if not is_orphaned(value):
        return False
    # Read again just before removing: a lock re-made meanwhile carries another mark.
    if _owner(path) != value:
        return False
    try:
        os.rmdir(path)
    except OSError:
        return False
    return True


def marked_pid(value: bytes | None) -> int | None:
    """The pid an owner mark names (for ``credsync doctor``), or None."""
    if value is None:
        return None
    parts = value.decode(errors="replace").rsplit(" ", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def held_by_live_credsync(path: Path) -> bool:
    """The lock carries the mark of a credsync process on this host that is alive (possibly
    this one): the agent's guard, or the process that shares the refresh lock with the caller."""
    value, host = _owner(path), _host()
    if value is None or host is None:
        return False
    parts = value.decode(errors="replace").rsplit(" ", 2)
    return (len(parts) == 3 and parts[0] == host and parts[1].isdigit()
            and _start_time(int(parts[1])) == parts[2])
