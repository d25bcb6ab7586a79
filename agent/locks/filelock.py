"""credsync's own cross-process locks (portalocker: a kernel flock, freed when a holder dies).

``agent.lock`` in the state dir: one ``credsync run`` per state dir.
``refresh.lock`` in the state dir: serialises every credsync process that may redeem a refresh
token (the agent, ``credsync token``, ``credsync refresh``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from agent.errors import LockError, StoreError
from agent.fsutil import PRIVATE_FILE, atomic_write, ensure_private_dir, open_regular

if TYPE_CHECKING:  # imported when a lock is taken: `credsync token` usually takes none
    import portalocker


def _lock_opener(path: str, flags: int) -> int:
    """How portalocker opens a lock file: created 0600 whatever the umask, and only ever a
    regular file, never through a symlink. A FIFO there would block the open forever (past
    SIGTERM), a directory would fail with a traceback."""
    return open_regular(Path(path), flags | os.O_CREAT, PRIVATE_FILE)


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: portalocker.Lock | None = None
        self._fh: IO[Any] | None = None

    def acquire(self, timeout_s: float) -> IO[Any]:
        """Take the lock within ``timeout_s``: LockError when another process holds it,
        StoreError (naming the file and the fix) when the lock file itself is unusable."""
        ensure_private_dir(self.path.parent)
        import portalocker

        lock = portalocker.Lock(str(self.path), mode="r+", timeout=timeout_s,
                                check_interval=0.02, fail_when_locked=False,
                                opener=_lock_opener)
        try:
            fh: IO[Any] = lock.acquire()
        except portalocker.exceptions.LockException as exc:
            raise LockError(f"{self.path} is held by another credsync process") from exc
        except OSError as exc:  # the opener maps what it knows; anything else lands here
            raise StoreError(f"cannot use {self.path}: {exc.strerror or exc}") from exc
        self._lock, self._fh = lock, fh
        return fh

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
        self._lock, self._fh = None, None

    @contextlib.contextmanager
    def hold(self, timeout_s: float) -> Iterator[IO[Any]]:
        fh = self.acquire(timeout_s)
        try:
            yield fh
        finally:
            self.release()

    def is_held_elsewhere(self) -> bool:
        """True when another process holds it now (probe without waiting)."""
        try:
            with self.hold(0):
                return False
        except LockError:
            return True


class InstanceLock:
    """Held for the whole life of ``credsync run``; the pid is written inside for others to see."""

    def __init__(self, state_dir: Path) -> None:
        self._lock = FileLock(state_dir / "agent.lock")
        self.pid_path = state_dir / "agent.pid"

    def acquire(self) -> None:
        self._lock.acquire(0)
        atomic_write(self.pid_path, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.pid_path)
        self._lock.release()

    def holder(self) -> int | None:
        """The pid of the running agent, or None when no agent holds the lock."""
        if not self._lock.path.exists() or not self._lock.is_held_elsewhere():
            return None
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return -1  # held, but the pid file is not readable: still "running"
