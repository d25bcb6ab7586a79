"""The CLI's lock dirs in each config dir: held, by whom, stale, left by a dead credsync.

The answers come from the lock code itself (``agent.locks.owner`` reads the owner marks, the
stale times are the ones ``agent.locks.mkdirlock`` applies), not from a second reading of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.cli.statustext import span
from agent.clock import Clock
from agent.doctor.model import Check, fail, ok, warn
from agent.locks import owner
from agent.locks.mkdirlock import (
    MkdirLock,
    legacy_refresh_lock,
    oauth_refresh_lock,
    storage_write_lock,
)

__all__ = ["lock_checks"]


def lock_checks(config_dirs: list[Path], clock: Clock) -> list[Check]:
    checks = []
    for directory in config_dirs:
        locks = [storage_write_lock(directory), oauth_refresh_lock(directory),
                 legacy_refresh_lock(directory)]
        found = [c for c in (_lock(lock, clock.now()) for lock in locks) if c is not None]
        checks += found or [ok(f"locks in {directory}", "none held")]
    return checks


def _lock(lock: MkdirLock, now: float) -> Check | None:
    path = lock.path
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None  # not there: not held
    name = f"lock {path}"
    mark = owner.mark_of(path)
    pid = owner.marked_pid(mark)
    if owner.held_by_live_credsync(path):
        return ok(name, f"held by credsync (pid {pid}), which keeps the sessions from racing")
    if owner.is_orphaned(mark):
        return fail(name, f"left by a credsync process that died (pid {pid}); sessions of "
                    "releases before 2.1.332 wait on it", f"rmdir {path} (starting the agent "
                    "frees it too)")
    age = now - mtime
    if age > lock.stale_s:
        return warn(name, f"stale: not touched for {span(age)}, its holder died or hangs "
                    f"(the CLI takes it over after {lock.stale_s:g} s)", f"rmdir {path}")
    if age < -lock.stale_s:
        return fail(name, f"its time is {span(age)} ahead and no live credsync holds it: the "
                    "CLI never takes it over", f"rmdir {path}")
    return ok(name, f"held by another process (touched {span(age)} ago): a session refreshing")
