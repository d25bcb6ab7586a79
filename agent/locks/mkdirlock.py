"""The Claude Code CLI's lock, taken exactly as the CLI takes it (proper-lockfile style).

The lock is the directory ``<path>``, created with mkdir (atomic). The holder refreshes its mtime
every ``update_s``; a contender treats it as stale only when its mtime is older than ``stale_s``,
removes it and tries again. Release is rmdir. Because the CLI and credsync agree on this, a
credsync refresh excludes every CLI session in the same config dir, and the reverse.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from agent.errors import LockError, StoreError
from agent.locks import owner as lockowner

T = TypeVar("T")

STORAGE_WRITE_STALE_S = 15.0
OAUTH_REFRESH_STALE_S = 60.0
OAUTH_REFRESH_UPDATE_S = 5.0


class MkdirLock:
    def __init__(
        self,
        path: Path,
        stale_s: float,
        update_s: float | None = None,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        marked: bool = False,
        kept: bool = True,
    ) -> None:
        self.path = path
        # Kept fresh by the shared keeper thread; a lock held for long is touched by its owner's
        # own loop instead (agent.locks.guard), so that a stuck owner stops looking alive.
        self.kept = kept
        self._inode: int | None = None
        self._mark: bytes | None = None
        # credsync's own locks carry an owner mark and free a lock whose marked owner died
        # (agent.locks.owner); the CLI's locks, and the simulated CLI's, are left unmarked.
        self.marked = marked
        self.stale_s = stale_s
        self.update_s = update_s if update_s is not None else max(stale_s / 2, 0.1)
        self._wall = wall
        self._sleep = sleep
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def _try_mkdir(self) -> bool:
        owner = lockowner.tag() if self.marked else None
        try:
            os.mkdir(self.path, 0o700)
            self._inode = os.stat(self.path).st_ino
            self._mark = owner
            if owner is not None:
                lockowner.mark(self.path, owner)
        except FileExistsError:
            return False
        except FileNotFoundError as exc:
            raise LockError(f"cannot lock {self.path}: its directory does not exist") from exc
        except OSError as exc:
            raise LockError(f"cannot lock {self.path}: {exc.strerror}") from exc
        return True

    def _age(self) -> float | None:
        try:
            return self._wall() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None

    def _remove_if_stale(self) -> None:
        if self.marked and lockowner.remove_if_orphaned(self.path):
            return
        age = self._age()
        if age is not None and age > self.stale_s:
            # Another contender may take it over first; either way one of us wins the mkdir.
            with contextlib.suppress(OSError):
                os.rmdir(self.path)

    def acquire(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            taken = self._try_mkdir()
            if not taken:
                self._remove_if_stale()
                taken = self._try_mkdir()
            if taken:
                self._held = True
                if self.kept:
                    KEEPER.add(self)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockError(f"{self.path} is held by another process (waited {timeout_s:g} s)")
            self._sleep(min(remaining, random.uniform(0.02, 0.1)))

    def release(self) -> None:
        if not self._held:
            return
        KEEPER.remove(self)  # no touch after this returns
        ours = self.still_ours()  # never remove a lock someone took over from us
        self._held = False
        if ours:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)

    def still_ours(self) -> bool:
        """The lock dir is the one we made, not one someone made again after taking it over (a
        new directory may get the old one's inode number: a marked lock is told by its mark)."""
        try:
            same = os.stat(self.path).st_ino == self._inode
        except OSError:
            return False
        if self._mark is not None:
            same = same and lockowner.mark_of(self.path) == self._mark
        return self._held and same

    def touch(self, mtime: float) -> None:
        """Set the lock's mtime, the time others judge its holder's liveness by."""
        os.utime(self.path, (mtime, mtime))

    @contextlib.contextmanager
    def hold(self, timeout_s: float) -> Iterator[MkdirLock]:
        self.acquire(timeout_s)
        try:
            yield self
        finally:
            self.release()


class Keeper:
    """One thread for every lock this process holds: it touches each lock's mtime every
    ``update_s``, so that others never see a live lock as stale.

    Shared rather than one thread per lock: a credential write holds a lock for about a
    millisecond, and starting a thread for it cost half of that. Without held locks the thread
    sleeps without a timeout (no idle wake-ups).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._due: dict[MkdirLock, float] = {}
        self._thread: threading.Thread | None = None

    def add(self, lock: MkdirLock) -> None:
        with self._cond:
            self._due[lock] = self._clock() + lock.update_s
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lock-keeper",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, lock: MkdirLock) -> None:
        with self._cond:  # waits for a touch in progress
            self._due.pop(lock, None)
            self._cond.notify()

    def holds(self, lock: MkdirLock) -> bool:
        with self._cond:
            return lock in self._due

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._due:
                    self._cond.wait()
                    continue
                now = self._clock()
                wait = min(self._due.values()) - now
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                for lock, due in list(self._due.items()):
                    if due <= now:
                        with contextlib.suppress(OSError):
                            os.utime(lock.path)
                        self._due[lock] = now + lock.update_s


KEEPER = Keeper()


def storage_write_lock(config_dir: Path, marked: bool = False) -> MkdirLock:
    return MkdirLock(config_dir / ".storage-write.lock", stale_s=STORAGE_WRITE_STALE_S,
                     marked=marked)


def under_storage_lock(storage_dir: Path, timeout_s: float, what: str,
                       work: Callable[[], T]) -> T:
    """``work()`` while holding the CLI's ``.storage-write.lock`` in ``storage_dir`` (marked as
    credsync's), the way every store of the CLI's own is written; StoreError naming ``what``
    when the dir is gone or the lock cannot be had in ``timeout_s``."""
    if not storage_dir.is_dir():
        raise StoreError(f"cannot write {what}: its dir {storage_dir} does not exist")
    try:
        with storage_write_lock(storage_dir, marked=True).hold(timeout_s):
            return work()
    except LockError as exc:
        raise StoreError(f"cannot write {what}: {exc}") from exc


def oauth_refresh_lock(config_dir: Path, marked: bool = False) -> MkdirLock:
    return MkdirLock(config_dir / ".oauth_refresh.lock", stale_s=OAUTH_REFRESH_STALE_S,
                     update_s=OAUTH_REFRESH_UPDATE_S, marked=marked)


def legacy_refresh_lock(config_dir: Path, marked: bool = False) -> MkdirLock:
    real = Path(os.path.realpath(config_dir))
    return MkdirLock(real.parent / f"{real.name}.lock", stale_s=OAUTH_REFRESH_STALE_S,
                     update_s=OAUTH_REFRESH_UPDATE_S, marked=marked)


def release_orphans(config_dir: Path) -> list[Path]:
    """Remove every lock of ``config_dir`` left by a dead credsync process; return them."""
    locks = [storage_write_lock(config_dir), oauth_refresh_lock(config_dir),
             legacy_refresh_lock(config_dir)]
    return [lock.path for lock in locks if lockowner.remove_if_orphaned(lock.path)]
