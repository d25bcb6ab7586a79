"""The CLI-style mkdir lock's keeper: a held lock stays fresh, a released one is left alone,
and one thread serves every lock of the process."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from agent.locks.mkdirlock import KEEPER, MkdirLock

DEADLINE_S = 5.0


def mtime(path: Path) -> float:
    return os.stat(path).st_mtime


def wait_until_touched(path: Path, since: float) -> None:
    end = time.monotonic() + DEADLINE_S
    while mtime(path) <= since:
        assert time.monotonic() < end, f"{path} was never touched"
        time.sleep(0.01)


def test_a_held_lock_is_touched_and_a_released_one_is_not(tmp_path: Path) -> None:
    lock = MkdirLock(tmp_path / "a.lock", stale_s=1.0, update_s=0.05)
    with lock.hold(1):
        old = time.time() - 100
        os.utime(lock.path, (old, old))
        wait_until_touched(lock.path, old)
        assert KEEPER.holds(lock)
    assert not KEEPER.holds(lock) and not lock.path.exists()
    # A directory made again at the same path (someone else's lock now) is never touched.
    lock.path.mkdir()
    old = time.time() - 100
    os.utime(lock.path, (old, old))
    probe = MkdirLock(tmp_path / "b.lock", stale_s=1.0, update_s=0.05)
    with probe.hold(1):  # the keeper runs, for another lock
        before = mtime(probe.path) - 1
        os.utime(probe.path, (before, before))
        wait_until_touched(probe.path, before)
    assert mtime(lock.path) == old


def test_one_keeper_thread_for_many_locks(tmp_path: Path) -> None:
    locks = [MkdirLock(tmp_path / f"{i}.lock", stale_s=1.0, update_s=0.05) for i in range(20)]
    for lock in locks:
        lock.acquire(1)
    try:
        keepers = [t for t in threading.enumerate() if t.name == "lock-keeper"]
        assert len(keepers) == 1
        old = time.time() - 100
        for lock in locks:
            os.utime(lock.path, (old, old))
        for lock in locks:
            wait_until_touched(lock.path, old)
    finally:
        for lock in locks:
            lock.release()
    assert not any(lock.path.exists() for lock in locks)
