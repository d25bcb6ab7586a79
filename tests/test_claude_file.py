"""The CLI's credential file beyond the store contract: symlinks, half-written files, the CLI's
write lock, and a merge that touches nothing but claudeAiOauth."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.credential import Credential, ReadState
from agent.errors import StoreError
from agent.stores.claude_file import SETTLE_S, ClaudeFileStore

BASE_MS = (int(time.time()) + 6 * 3600) * 1000  # a real login: expires within a day


def cred(n: int) -> Credential:
    return Credential.build(f"at-{n}", f"rt-{n}", BASE_MS + n * 3_600_000,
                            scopes=["user:inference", "user:profile"], subscriptionType="max")


def doc_of(c: Credential, **other: Any) -> dict[str, Any]:
    return {"claudeAiOauth": c.to_json_obj(), **other}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "claude"
    path.mkdir()
    return path


# --- symlinks -----------------------------------------------------------------------------------

def test_a_symlinked_file_is_written_through_and_stays_a_link(config_dir: Path,
                                                              tmp_path: Path) -> None:
    target = tmp_path / "shared" / "creds.json"
    target.parent.mkdir()
    target.write_text(json.dumps(doc_of(cred(1), keep="me")))
    link = config_dir / ".credentials.json"
    link.symlink_to(target)
    store = ClaudeFileStore(config_dir)
    assert store.write(cred(2)) is True
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text()) == doc_of(cred(2), keep="me")
    assert not [p for p in target.parent.iterdir() if p != target]  # no temp file left
    assert not [p for p in config_dir.iterdir() if p != link]
    read = store.read().valid
    assert read is not None and read.same_tokens(cred(2))


def test_a_dangling_symlink_gets_its_target_created(config_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "creds.json"
    link = config_dir / ".credentials.json"
    link.symlink_to(target)
    store = ClaudeFileStore(config_dir)
    assert store.read().state is ReadState.MISSING
    assert store.write(cred(1)) is True
    assert link.is_symlink()
    assert json.loads(target.read_text()) == doc_of(cred(1))


# --- a file another process is writing in place -------------------------------------------------

class SlowWriter(threading.Thread):
    """Rewrites the file in place (truncate, then chunks with pauses), as a careless tool does."""

    def __init__(self, path: Path, data: bytes, chunk: int, pause_s: float) -> None:
        super().__init__(name="slow-writer", daemon=True)
        self.path, self.data, self.chunk, self.pause_s = path, data, chunk, pause_s
        self.started_writing = threading.Event()

    def run(self) -> None:
        with open(self.path, "r+b") as fh:
            fh.truncate(0)
            for start in range(0, len(self.data), self.chunk):
                fh.write(self.data[start:start + self.chunk])
                fh.flush()
                self.started_writing.set()
                if start + self.chunk < len(self.data):
                    time.sleep(self.pause_s)  # the writer's own pace, not synchronisation


@pytest.fixture
def slow_file(config_dir: Path) -> Iterator[tuple[ClaudeFileStore, Path]]:
    store = ClaudeFileStore(config_dir)
    store.path.write_text(json.dumps(doc_of(cred(1), other={"x": "y" * 50}), indent=2))
    yield store, store.path


@pytest.mark.parametrize(("chunk", "pause_s"), [(1, 0.0003), (60, 0.045)],
                         ids=["byte-by-byte", "chunks-with-long-pauses"])
def test_a_half_written_file_is_never_acted_upon(slow_file: tuple[ClaudeFileStore, Path],
                                                 chunk: int, pause_s: float) -> None:
    store, path = slow_file
    new = json.dumps(doc_of(cred(2), other={"x": "y" * 50}), indent=2).encode()
    writer = SlowWriter(path, new, chunk, pause_s)
    planned = (len(new) // chunk) * pause_s
    assert planned < SETTLE_S * 0.8  # the write settles within the read's settle window
    writer.start()
    assert writer.started_writing.wait(5)
    readings = []
    deadline = time.monotonic() + 10
    while writer.is_alive():
        readings.append(store.read())
        assert time.monotonic() < deadline
    writer.join(5)
    readings.append(store.read())
    assert [r.state for r in readings] == [ReadState.VALID] * len(readings)
    tokens = [r.credential.access_token for r in readings if r.credential is not None]
    assert tokens[-1] == "at-2"
    assert set(tokens) <= {"at-1", "at-2"}


def test_garbage_that_stays_garbage_is_reported_promptly(config_dir: Path) -> None:
    store = ClaudeFileStore(config_dir)
    store.path.write_text('{"claudeAiOauth": ')
    started = time.monotonic()
    reading = store.read()
    assert reading.state is ReadState.INVALID and "JSON" in reading.detail
    assert time.monotonic() - started < SETTLE_S + 0.5


# --- the CLI's .storage-write.lock --------------------------------------------------------------

def test_a_held_lock_makes_a_write_wait_for_it(config_dir: Path) -> None:
    lock = config_dir / ".storage-write.lock"
    lock.mkdir()
    release = threading.Timer(0.3, lock.rmdir)  # the other holder lets go after a while
    store = ClaudeFileStore(config_dir, lock_timeout_s=5)
    started = time.monotonic()
    release.start()
    try:
        assert store.write(cred(1)) is True
    finally:
        release.join()
    assert time.monotonic() - started >= 0.3
    assert not lock.exists()  # released after the write


def test_a_held_fresh_lock_times_out_with_store_error(config_dir: Path) -> None:
    store = ClaudeFileStore(config_dir, lock_timeout_s=0.4)
    store.write(cred(1))
    before = store.path.read_bytes()
    lock = config_dir / ".storage-write.lock"
    lock.mkdir()
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"storage-write\.lock"):
        store.write(cred(2))
    took = time.monotonic() - started
    assert 0.4 <= took < 0.4 + 1.0
    assert store.path.read_bytes() == before
    assert lock.is_dir()  # another holder's lock is never removed while fresh


def test_a_stale_lock_is_taken_over(config_dir: Path) -> None:
    lock = config_dir / ".storage-write.lock"
    lock.mkdir()
    old = time.time() - 20  # older than the CLI's 15 s stale time
    os.utime(lock, (old, old))
    store = ClaudeFileStore(config_dir, lock_timeout_s=0.5)
    started = time.monotonic()
    assert store.write(cred(1)) is True
    assert time.monotonic() - started < 0.5
    assert not lock.exists()


def test_the_lock_is_held_while_the_file_is_replaced(config_dir: Path) -> None:
    seen: list[bool] = []
    lock = config_dir / ".storage-write.lock"

    class Spy(ClaudeFileStore):
        def _write_locked(self, c: Credential, supersedes: Credential | None) -> bool:
            seen.append(lock.is_dir())
            return super()._write_locked(c, supersedes)

    assert Spy(config_dir).write(cred(1)) is True
    assert seen == [True]
    assert not lock.exists()


# --- only claudeAiOauth changes -----------------------------------------------------------------

def test_only_claude_ai_oauth_changes(config_dir: Path) -> None:
    other: dict[str, Any] = {
        "mcpOAuth": {"linear|1a2b": {"accessToken": "mcp-a", "expiresAt": 1_700_000_000_000,
                                     "scopes": ["read", "write"]}},
        "unicode": "naïve ✓ 日本",
        "numbers": [0, -1, 1.5, 2**70, 1e-7],
        "flags": {"t": True, "f": False, "n": None},
        "empty": {},
    }
    original = {"first": 1, **doc_of(cred(1)), **other}
    path = config_dir / ".credentials.json"
    path.write_text(json.dumps(original))
    assert ClaudeFileStore(config_dir).write(cred(2)) is True
    written = json.loads(path.read_text())
    assert list(written) == list(original)  # same keys, same order
    assert {k: v for k, v in written.items() if k != "claudeAiOauth"} == {"first": 1, **other}
    assert written["claudeAiOauth"] == cred(2).to_json_obj()
