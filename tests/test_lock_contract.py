"""One contract for the lock interface, run against every implementation.

Subjects: credsync's own flock (``agent.locks.filelock.FileLock``, portalocker) and the CLI's
mkdir lock (``agent.locks.mkdirlock.MkdirLock``) as credsync takes it, marked with its owner (the
refresh lock and the storage-write lock), and unmarked, as the CLI itself takes it (short stale
time here).

The other holder is always a real separate process (``HOLDER``): it takes the same lock, says
``held`` on stdout, and waits for stdin. Every wait is on a condition with a deadline.

Where the implementations differ by design, the expectation is a row of a table
(``KILLED``, ``MISSING_PARENT``) rather than a branch in a test.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from agent.errors import LockError, StoreError
from agent.locks.filelock import FileLock
from agent.locks.mkdirlock import MkdirLock, oauth_refresh_lock, release_orphans, storage_write_lock
from tests.agentproc import REPO

TIMEOUT_S = 0.5
UNMARKED_STALE_S = 1.5
UNMARKED_UPDATE_S = 0.1
DEADLINE_S = 15.0


class Lock(Protocol):
    def acquire(self, timeout_s: float) -> object: ...

    def release(self) -> None: ...

    def hold(self, timeout_s: float) -> AbstractContextManager[object]: ...


# The other holder: builds the same lock from argv, takes it, reports, waits for stdin.
HOLDER = """
import sys
from pathlib import Path
kind, path = sys.argv[1], Path(sys.argv[2])
if kind == "file":
    from agent.locks.filelock import FileLock
    lock = FileLock(path)
else:
    from agent.locks.mkdirlock import MkdirLock
    lock = MkdirLock(path, stale_s=float(sys.argv[3]), update_s=float(sys.argv[4]),
                     marked=kind == "mkdir-marked")
mode = sys.argv[5]
if mode == "probe":  # take it without waiting: exit 0 when taken, 3 when held elsewhere
    from agent.errors import LockError
    try:
        lock.acquire(0)
    except LockError:
        sys.exit(3)
    lock.release()
    sys.exit(0)
lock.acquire(10)
print("held", flush=True)
sys.stdin.read()
lock.release()
print("released", flush=True)
"""


@dataclass(frozen=True)
class Subject:
    kind: str
    path: Path  # the lock file (FileLock) or directory (MkdirLock)
    config_dir: Path  # where release_orphans looks (MkdirLock)
    make: Callable[[], Lock]  # a new, independent lock object on the same path
    holder_args: tuple[str, ...]  # argv for HOLDER after the path

    def probe_elsewhere(self) -> bool:
        """Can a separate process take the lock right now (acquire(0))?"""
        proc = subprocess.run(self._argv("probe"), cwd=REPO, capture_output=True, text=True,
                              timeout=DEADLINE_S)
        assert proc.returncode in (0, 3), proc.stderr
        return proc.returncode == 0

    def _argv(self, mode: str) -> list[str]:
        return [sys.executable, "-c", HOLDER, *self.holder_args[:1], str(self.path),
                *self.holder_args[1:], mode]


def _file(tmp_path: Path) -> Subject:
    path = tmp_path / "state" / "refresh.lock"
    path.parent.mkdir(mode=0o700)
    return Subject("file", path, tmp_path / "state", lambda: FileLock(path),
                   ("file", "0", "0"))


def _mkdir(tmp_path: Path, kind: str) -> Subject:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    make: Callable[[], MkdirLock]
    if kind == "mkdir-refresh-marked":
        make = lambda: oauth_refresh_lock(config_dir, marked=True)  # noqa: E731
    elif kind == "mkdir-storage-marked":
        make = lambda: storage_write_lock(config_dir, marked=True)  # noqa: E731
    else:  # the CLI's own kind, at the CLI's refresh-lock name: unmarked, freed only when stale
        make = lambda: MkdirLock(config_dir / ".oauth_refresh.lock",  # noqa: E731
                                 stale_s=UNMARKED_STALE_S, update_s=UNMARKED_UPDATE_S)
    sample = make()
    marked = "mkdir-marked" if sample.marked else "mkdir"
    return Subject(kind, sample.path, config_dir, make,
                   (marked, f"{sample.stale_s:g}", f"{sample.update_s:g}"))


KINDS = ["file", "mkdir-refresh-marked", "mkdir-storage-marked", "mkdir-unmarked"]


@pytest.fixture
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Subject:
    kind: str = request.param
    return _file(tmp_path) if kind == "file" else _mkdir(tmp_path, kind)


class Holder:
    """The lock held by a real separate process until ``release()`` or ``kill()``."""

    def __init__(self, subject: Subject) -> None:
        self.proc = subprocess.Popen(subject._argv("hold"), cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.expect("held")

    def expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE_S)
        line = self.proc.stdout.readline().strip() if ready else "(nothing in time)"
        if line != word:
            self.kill()
            raise AssertionError(f"holder said {line!r}, not {word!r}: "
                                 f"{self.proc.stderr.read() if self.proc.stderr else ''}")

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.expect("released")
        assert self.proc.wait(timeout=DEADLINE_S) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE_S)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.kill()


def hold_elsewhere(subject: Subject, holders: list[Holder]) -> Holder:
    holder = Holder(subject)
    holders.append(holder)
    return holder


def timed_acquire_fails(lock: Lock, timeout_s: float) -> float:
    started = time.monotonic()
    with pytest.raises(LockError) as caught:
        lock.acquire(timeout_s)
    elapsed = time.monotonic() - started
    assert "\n" not in str(caught.value)
    return elapsed


# -- the contract ------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_acquire_then_release_lets_another_holder_in(subject: Subject,
                                                     holders: list[Holder]) -> None:
    lock = subject.make()
    lock.acquire(TIMEOUT_S)
    assert not subject.probe_elsewhere()  # really held, as another process sees it
    lock.release()
    other = subject.make()
    other.acquire(0)  # another holder in this process
    other.release()
    hold_elsewhere(subject, holders).release()  # and one in another process
    lock.acquire(0)  # the first object can take it again
    lock.release()


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_a_holder_elsewhere_makes_acquire_fail_after_about_the_timeout(
        subject: Subject, holders: list[Holder]) -> None:
    holder = hold_elsewhere(subject, holders)
    lock = subject.make()
    elapsed = timed_acquire_fails(lock, TIMEOUT_S)
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.0
    # Failing leaves nothing held: once the holder lets go, this object can take it.
    holder.release()
    lock.acquire(0)
    lock.release()


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_acquire_zero_never_blocks(subject: Subject, holders: list[Holder]) -> None:
    lock = subject.make()
    started = time.monotonic()
    lock.acquire(0)  # free: taken at once
    lock.release()
    assert time.monotonic() - started < 0.5
    hold_elsewhere(subject, holders)
    assert timed_acquire_fails(lock, 0) < 0.5  # held: refused at once


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_release_is_idempotent(subject: Subject) -> None:
    lock = subject.make()
    lock.release()  # never acquired
    lock.acquire(TIMEOUT_S)
    lock.release()
    lock.release()
    assert subject.probe_elsewhere()


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_a_second_release_does_not_free_someone_elses_lock(
        subject: Subject, holders: list[Holder]) -> None:
    lock = subject.make()
    lock.acquire(TIMEOUT_S)
    lock.release()
    hold_elsewhere(subject, holders)
    lock.release()  # late, repeated: must not touch the other process's lock
    assert not subject.probe_elsewhere()


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_hold_releases_on_exception(subject: Subject) -> None:
    lock = subject.make()
    with pytest.raises(RuntimeError, match="boom"), lock.hold(TIMEOUT_S):
        assert not subject.probe_elsewhere()
        raise RuntimeError("boom")
    assert subject.probe_elsewhere()
    if subject.kind != "file":
        assert not subject.path.exists()


# -- a holder killed with SIGKILL: where the implementations differ ---------------------------


@dataclass(frozen=True)
class AfterKill:
    acquire_at_once: bool  # does acquire(0) take it right after the holder died?
    release_orphans_frees: bool | None  # None: not a mkdir lock of a config dir
    freed_when_stale: bool  # else: never freed by waiting


KILLED = {
    # The kernel drops a dead process's flock.
    "file": AfterKill(acquire_at_once=True, release_orphans_frees=None, freed_when_stale=False),
    # The owner mark names a dead process: an orphan, freed at once by either route.
    "mkdir-refresh-marked": AfterKill(True, True, False),
    "mkdir-storage-marked": AfterKill(True, True, False),
    # The CLI's unmarked lock: nobody can tell its owner died; it waits out its stale time.
    "mkdir-unmarked": AfterKill(acquire_at_once=False, release_orphans_frees=False,
                                freed_when_stale=True),
}


def killed_holder(subject: Subject, holders: list[Holder]) -> None:
    holder = hold_elsewhere(subject, holders)
    holder.kill()  # SIGKILL, and reaped


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_a_killed_holder_and_acquire(subject: Subject, holders: list[Holder]) -> None:
    want = KILLED[subject.kind]
    killed_holder(subject, holders)
    lock = subject.make()
    if want.acquire_at_once:
        lock.acquire(0)
        lock.release()
        return
    timed_acquire_fails(lock, 0)
    assert want.freed_when_stale
    # Freed only by the stale rule: no sooner than the stale time after the last touch.
    started = time.monotonic()
    lock.acquire(UNMARKED_STALE_S + 2.0)
    waited = time.monotonic() - started
    lock.release()
    # The holder touched it at most update_s before it died.
    assert UNMARKED_STALE_S - UNMARKED_UPDATE_S - 0.3 <= waited < UNMARKED_STALE_S + 1.0


@pytest.mark.parametrize("subject", [k for k in KINDS if KILLED[k].release_orphans_frees
                                     is not None], indirect=True)
def test_a_killed_holder_and_release_orphans(subject: Subject, holders: list[Holder]) -> None:
    want = KILLED[subject.kind]
    killed_holder(subject, holders)
    assert subject.path.is_dir()  # mkdir locks outlive their holder
    freed = release_orphans(subject.config_dir)
    if want.release_orphans_frees:
        assert freed == [subject.path]
        assert not subject.path.exists()
        assert subject.probe_elsewhere()
    else:
        assert freed == []
        assert subject.path.is_dir()
        assert not subject.probe_elsewhere()


@pytest.mark.parametrize("subject", [k for k in KINDS if KILLED[k].release_orphans_frees],
                         indirect=True)
def test_release_orphans_leaves_a_live_holders_lock(subject: Subject,
                                                    holders: list[Holder]) -> None:
    hold_elsewhere(subject, holders)
    assert release_orphans(subject.config_dir) == []
    assert subject.path.is_dir() and not subject.probe_elsewhere()


# -- an unusable path: a clear one-line error, never a bare OSError ----------------------------

# A lock whose parent directory does not exist yet. FileLock makes its (state) directory, 0700;
# a mkdir lock never makes a config dir: that is the CLI's, and its absence a fault to report.
MISSING_PARENT = {
    "file": "created",
    "mkdir-refresh-marked": "error",
    "mkdir-storage-marked": "error",
    "mkdir-unmarked": "error",
}


def _relocated(subject: Subject, path: Path) -> Lock:
    if subject.kind == "file":
        return FileLock(path)
    sample = subject.make()
    assert isinstance(sample, MkdirLock)
    return MkdirLock(path, stale_s=sample.stale_s, update_s=sample.update_s,
                     marked=sample.marked)


def assert_clear_error(lock: Lock, path: Path) -> None:
    with pytest.raises((LockError, StoreError)) as caught:
        lock.acquire(TIMEOUT_S)
    message = str(caught.value)
    # One line naming the lock or the directory it needs.
    assert "\n" not in message, message
    assert any(str(p) in message for p in (path, path.parent)), message
    lock.release()


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_a_missing_parent_directory(subject: Subject, tmp_path: Path) -> None:
    path = tmp_path / "gone" / "deeper" / subject.path.name
    lock = _relocated(subject, path)
    if MISSING_PARENT[subject.kind] == "error":
        assert_clear_error(lock, path)
        assert not path.parent.exists()
        return
    lock.acquire(TIMEOUT_S)
    try:
        assert path.exists() and (path.parent.stat().st_mode & 0o777) == 0o700
    finally:
        lock.release()


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_a_parent_that_cannot_be_a_directory(subject: Subject, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "sub" / subject.path.name
    assert_clear_error(_relocated(subject, path), path)


# -- what each implementation adds to the interface -------------------------------------------


@pytest.mark.parametrize("subject", ["file"], indirect=True)
def test_filelock_is_held_elsewhere_sees_another_process(
        subject: Subject, holders: list[Holder]) -> None:
    lock = subject.make()
    assert isinstance(lock, FileLock)
    assert not lock.is_held_elsewhere()
    holder = hold_elsewhere(subject, holders)
    assert lock.is_held_elsewhere()
    holder.release()
    assert not lock.is_held_elsewhere()
    assert subject.probe_elsewhere()  # the probe itself left nothing held


@pytest.mark.parametrize("subject", ["mkdir-refresh-marked", "mkdir-storage-marked",
                                     "mkdir-unmarked"], indirect=True)
def test_mkdirlock_held_follows_acquire_release_and_failure(
        subject: Subject, holders: list[Holder]) -> None:
    lock = subject.make()
    assert isinstance(lock, MkdirLock)
    assert not lock.held
    with lock.hold(TIMEOUT_S):
        assert lock.held
    assert not lock.held
    hold_elsewhere(subject, holders)
    timed_acquire_fails(lock, 0)
    assert not lock.held and subject.path.is_dir()  # the other holder's lock is untouched
