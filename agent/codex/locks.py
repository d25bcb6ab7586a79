"""Codex's two write locks, taken as Codex 0.171.0 takes them around persisting a login.

1. ``$CODEX_HOME/auth.lock`` (created 0666, as Codex creates it), ``flock(LOCK_EX)``: Codex
   blocks on it; credsync waits for it with a deadline.
2. ``$CODEX_HOME/auth.json.lock`` (created 0600), ``flock(LOCK_EX|LOCK_NB)``, retried until a
   (shorter) deadline.

Both are kernel ``flock`` locks, freed when the holder dies, so nothing is ever orphaned. The
waits poll (``LOCK_NB`` every ``step_s``) through an injected ``sleep``: a bounded wait that a
test can observe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.errors import LockError, StoreError
from agent.fsutil import open_regular

OUTER_NAME, INNER_NAME = "auth.lock", "auth.json.lock"
OUTER_MODE, INNER_MODE = 0o666, 0o600
OUTER_TIMEOUT_S = 2.0
INNER_TIMEOUT_S = 1.0
STEP_S = 0.01

Sleep = Callable[[float], None]


def _try_flock(fd: int) -> bool:
    if sys.platform == "win32":  # Codex's locks are Unix flock locks
        raise StoreError("Codex's write locks (flock) are not available on Windows")
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise StoreError(f"cannot lock: {exc.strerror or exc}") from exc
    return True


@contextlib.contextmanager
def flocked(path: Path, mode: int, timeout_s: float, sleep: Sleep = time.sleep,
            step_s: float = STEP_S) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on ``path`` (created with ``mode``, never through a symlink);
    LockError when another process still holds it after ``timeout_s``."""
    fd = open_regular(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        deadline = time.monotonic() + timeout_s
        while not _try_flock(fd):
            if time.monotonic() >= deadline:
                raise LockError(f"{path} is held by another process (waited {timeout_s:g} s)")
            sleep(step_s)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


class CodexLocks:
    """The lock pair of one ``CODEX_HOME``: ``outer()`` around the re-read and the write,
    ``inner()`` around the rename."""

    def __init__(self, home: Path, *, outer_timeout_s: float = OUTER_TIMEOUT_S,
                 inner_timeout_s: float = INNER_TIMEOUT_S, sleep: Sleep = time.sleep) -> None:
        self.outer_path = home / OUTER_NAME
        self.inner_path = home / INNER_NAME
        self.outer_timeout_s = outer_timeout_s
        self.inner_timeout_s = inner_timeout_s
        self._sleep = sleep

    def outer(self) -> contextlib.AbstractContextManager[None]:
        return flocked(self.outer_path, OUTER_MODE, self.outer_timeout_s, self._sleep)

    def inner(self) -> contextlib.AbstractContextManager[None]:
        return flocked(self.inner_path, INNER_MODE, self.inner_timeout_s, self._sleep)
