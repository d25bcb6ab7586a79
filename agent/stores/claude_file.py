"""The Claude Code CLI's own credential file, ``<config dir>/.credentials.json``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.credential import (
    MAX_DOCUMENT_BYTES,
    Credential,
    Reading,
    ReadState,
    merged_document,
    parse_document,
    render_document,
)
from agent.errors import StoreError
from agent.fsutil import Signature, atomic_write, read_bytes, write_target
from agent.locks.mkdirlock import release_orphans, under_storage_lock
from agent.stores.base import Role, Store

FILE_NAME = ".credentials.json"
# Another process may be half-way through an in-place write: re-read for this long while the
# content keeps changing, and never act on a partial document.
SETTLE_S = 0.25
SETTLE_STEP_S = 0.02
# Garbage that has not changed for this many steps is at rest, not a write in progress (a writer
# may pause between chunks for longer than one step).
STABLE_STEPS = 5
WRITE_LOCK_TIMEOUT_S = 3.0


def require_writable(cred: Credential) -> None:
    if cred.is_blank:
        raise StoreError("refusing to write a blank credential")


class ClaudeFileStore(Store):
    kind = "claude-file"
    role = Role.HOLDER
    config_dir: Path

    def __init__(
        self,
        config_dir: Path,
        sleep: Callable[[float], None] = time.sleep,
        lock_timeout_s: float = WRITE_LOCK_TIMEOUT_S,
    ) -> None:
        self.config_dir = config_dir
        self.lock_timeout_s = lock_timeout_s
        self.path = config_dir / FILE_NAME
        self.name = f"file:{config_dir}"
        self.location = str(self.path)
        self._sleep = sleep
        self.written: Signature | None = None

    @property
    def watch_path(self) -> Path:
        return self.path

    def _read_once(self) -> tuple[bytes | None, Reading, dict[str, Any] | None]:
        try:
            raw = read_bytes(self.path, MAX_DOCUMENT_BYTES)
        except StoreError as exc:
            return None, Reading(ReadState.ERROR, detail=str(exc)), None
        if raw is None:
            return None, Reading(ReadState.MISSING, detail="no credentials file"), None
        reading, doc = parse_document(raw)
        return raw, reading, doc

    def read_document(self) -> tuple[Reading, dict[str, Any] | None]:
        raw, reading, doc = self._read_once()
        waited, unchanged = 0.0, 0
        while reading.state is ReadState.INVALID and waited < SETTLE_S:
            self._sleep(SETTLE_STEP_S)
            waited += SETTLE_STEP_S
            again, reading, doc = self._read_once()
            unchanged = unchanged + 1 if again == raw else 0
            if reading.state is ReadState.INVALID and unchanged >= STABLE_STEPS:
                break  # the same bytes for a while: not a write in progress
            raw = again
        return reading, doc

    def read(self) -> Reading:
        return self.read_document()[0]

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        require_writable(cred)
        return under_storage_lock(self.config_dir, self.lock_timeout_s, str(self.path),
                                  lambda: self._write_locked(cred, supersedes))

    def release_orphaned_locks(self) -> list[Path]:
        """Free this config dir's locks left by a credsync process that died holding them."""
        return release_orphans(self.config_dir) if self.config_dir.is_dir() else []

    def write_holding_lock(self, cred: Credential, supersedes: Credential | None) -> bool:
        """``write`` for a caller that already holds this dir's ``.storage-write.lock`` (the
        Windows store, which decides between Credential Manager and this file inside it)."""
        require_writable(cred)
        return self._write_locked(cred, supersedes)

    def _write_locked(self, cred: Credential, supersedes: Credential | None) -> bool:
        reading, doc = self.read_document()
        current = reading.valid
        if current is not None and (current.same_tokens(cred)
                                    or current.newer_than(cred, supersedes)):
            # Same login, or someone wrote a fresher one since we decided: never go backwards.
            return False
        if reading.state is ReadState.INVALID:
            doc = None  # garbage is replaced whole; there is nothing to keep
        data = render_document(merged_document(doc, cred))
        self.written = atomic_write(write_target(self.path), data)
        return True
