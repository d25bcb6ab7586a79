"""Holding the CLI's refresh locks for as long as the agent keeps a login (the wake guard).

After a sleep every session wakes with an expired token at once, each in its own config dir
under that dir's own lock: three dirs are three racers, and the second one to present the
single-use refresh token gets the whole family revoked. A lock taken at wake is too late (the
sessions wake in the same millisecond), and a sleep notice does not come under SIGSTOP or a
hard suspend. So the agent holds every config dir's ``.oauth_refresh.lock`` and legacy
``<dir>.lock`` all the time it keeps a login: a session that needs a refresh finds them held,
retries, re-reads the store on every retry and adopts the token credsync writes (2.1.332); it
never sends a refresh token of its own.

By the CLI's own rules (proper-lockfile; 2.1.332's dead-holder takeover):
- the lock is stale when its mtime is older than 60 s: the mtime is set ``AHEAD_S`` into the
  future, so that no sleep shorter than that makes a held lock look stale at wake;
- 2.1.332 takes ``.oauth_refresh.lock`` over when its mtime does not move for 7.5 s: the mtime
  is moved every ``BEAT_S`` by the agent's loop itself (not a thread), so a loop that is stuck
  or dead stops looking alive and the sessions take over;
- credsync marks the locks with its owner; a restarted credsync frees the ones its dead
  predecessor left (``release_orphans``). Releases before 2.1.332 have no takeover: for them a
  SIGKILLed credsync's locks stand until credsync starts again (the login item restarts it on
  failure and at the next login) or ``AHEAD_S`` has passed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from agent.errors import LockError
from agent.locks.mkdirlock import MkdirLock, legacy_refresh_lock, oauth_refresh_lock

log = logging.getLogger("credsync.guard")

# The lock's mtime is kept this far ahead: no sleep shorter (a month's holiday with the lid
# shut) makes a held lock look stale at wake.
AHEAD_S = 30 * 86400.0
# 2.1.332 watches the mtime of ``.oauth_refresh.lock`` for 7.5 s: moved every 3.5 s, a live
# holder is seen to move in any such window. Only while a session may want a refresh (the
# login near or past its expiry, or just woken): each move costs an inotify event in the
# config dir the agent watches (watchdog cannot leave attribute changes out while it reports
# modifications), and in normal times no session looks, since credsync refreshes long before
# the CLI's own window. Otherwise every lock is moved twice an hour, to stay a day ahead.
BEAT_S = 3.5
KEEP_AHEAD_S = 1800.0


class CliLockGuard:
    def __init__(self, config_dirs: Iterable[Path], ahead_s: float = AHEAD_S,
                 beat_s: float = BEAT_S) -> None:
        self.config_dirs = sorted({Path(os.path.realpath(d)) for d in config_dirs})
        self.ahead_s = ahead_s
        self.beat_s = beat_s
        self.locks: dict[Path, MkdirLock] = {}  # held, by path
        self._touched: dict[Path, float] = {}  # when each held lock's mtime was last moved
        # No one watches the legacy lock move (only 2.1.332 has a takeover, on the other one).
        self._legacy = {legacy_refresh_lock(d).path for d in self.config_dirs}
        self._next_beat: float | None = None

    def _wanted(self) -> list[MkdirLock]:
        out: list[MkdirLock] = []
        for d in self.config_dirs:
            if d.is_dir():
                out += [oauth_refresh_lock(d, marked=True), legacy_refresh_lock(d, marked=True)]
        for lock in out:
            lock.kept = False
        return out

    @property
    def held(self) -> list[Path]:
        return sorted(self.locks)

    def hold(self, now: float) -> None:
        """Take every lock not held yet (a session may hold one now: tried again next beat)."""
        self._next_beat = now + self.beat_s
        if len(self.locks) == 2 * len(self.config_dirs):
            return  # all held: nothing to look up on this beat
        for lock in self._wanted():
            if lock.path in self.locks:
                continue
            try:
                lock.acquire(0)
            except LockError:
                continue
            self.locks[lock.path] = lock
            self._touch(lock, now)
            log.debug("holding %s", lock.path)

    def beat(self, now: float, watched: bool = True) -> None:
        """Move the held locks' mtimes (``watched``: sessions may be watching them move, so
        the refresh lock's now, the rest when due); notice one taken over; take the rest."""
        for path, lock in list(self.locks.items()):
            if not lock.still_ours():
                del self.locks[path]
                log.warning("%s was taken over by another process", path)
                continue
            if (watched and path not in self._legacy) or \
                    now - self._touched.get(path, 0.0) >= KEEP_AHEAD_S:
                self._touch(lock, now)
        self.hold(now)

    def _touch(self, lock: MkdirLock, now: float) -> None:
        try:
            lock.touch(now + self.ahead_s)
            self._touched[lock.path] = now
        except OSError as exc:
            log.warning("cannot touch %s: %s", lock.path, exc.strerror or exc)

    def next_beat(self) -> float | None:
        return self._next_beat

    def release(self) -> None:
        for lock in self.locks.values():
            lock.release()
        self.locks.clear()
        self._touched.clear()
        self._next_beat = None
