"""The Codex CLI's own login file, ``$CODEX_HOME/auth.json`` (``../shared/notes/codex.md``).

Written as Codex writes it: under its lock pair (``agent.codex.locks``), re-read inside the
outer lock, a temp ``.auth-XXXXXX`` (0600) in the same directory, fsync, rename over
``auth.json``, fsync of the directory; pretty JSON, every key of the document kept. Codex
replaces the file by rename, so the watcher watches the directory (it does already).

A deleted ``auth.json`` after a login was seen is a logout: the winner rule decides that from
the MISSING reading; the store never recreates a file on its own.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from agent.codex.authdoc import Refusal, parse_auth, refusal, render_auth
from agent.codex.locks import INNER_TIMEOUT_S, OUTER_TIMEOUT_S, CodexLocks, Sleep
from agent.codex.tokens import account_of, auth_with
from agent.credential import MAX_DOCUMENT_BYTES, Credential, Reading, ReadState, fingerprint_of
from agent.errors import LockError, StoreError
from agent.fsutil import Signature, atomic_write, read_bytes, write_target
from agent.stores.base import Role, Store

log = logging.getLogger(__name__)

FILE_NAME = "auth.json"
TEMP_PREFIX = ".auth-"  # Codex's temp name: .auth-XXXXXX
TEMP_SUFFIX = ""


def require_writable(cred: Credential) -> None:
    if cred.is_blank:
        raise StoreError("refusing to write a blank credential")


class RefusalLog:
    """Logs each refusal to write a login once per store and pair of logins (never a token:
    account ids and access tokens by fingerprint)."""

    def __init__(self, store: str) -> None:
        self.store = store
        self._seen: set[tuple[str, str, str]] = set()

    def note(self, why: Refusal, current: Credential | None, cred: Credential) -> None:
        if why not in (Refusal.OTHER_IDENTITY, Refusal.OTHER_LOGIN):
            return
        key = (why.name, current.fingerprint if current else "-", cred.fingerprint)
        if key in self._seen:
            return
        self._seen.add(key)
        log.warning("%s: not writing login %s: %s (account %s, not %s); a login is never "
                    "propagated across accounts or over another way of signing in",
                    self.store, cred.fingerprint, why.value,
                    fingerprint_of(account_of(current) or "") if current else "-",
                    fingerprint_of(account_of(cred) or ""))


class CodexFileStore(Store):
    kind = "codex-file"
    role = Role.HOLDER

    def __init__(self, home: Path, *, outer_timeout_s: float = OUTER_TIMEOUT_S,
                 inner_timeout_s: float = INNER_TIMEOUT_S, sleep: Sleep = time.sleep) -> None:
        self.home = home
        self.path = home / FILE_NAME
        self.name = f"codex:{home}"
        self.location = str(self.path)
        self.config_dir = None
        self.written: Signature | None = None
        self.locks = CodexLocks(home, outer_timeout_s=outer_timeout_s,
                                inner_timeout_s=inner_timeout_s, sleep=sleep)
        self.refusals = RefusalLog(self.name)

    @property
    def session_dir(self) -> Path:
        return self.home

    @property
    def watch_path(self) -> Path:
        return self.path

    def read_document(self) -> tuple[Reading, dict[str, Any] | None]:
        """What ``auth.json`` holds now, and its document (None when absent or garbage)."""
        try:
            raw = read_bytes(self.path, MAX_DOCUMENT_BYTES)
        except StoreError as exc:
            return Reading(ReadState.ERROR, detail=str(exc)), None
        if raw is None:
            return Reading(ReadState.MISSING, detail=f"no {FILE_NAME}"), None
        return parse_auth(raw)

    def read(self) -> Reading:
        return self.read_document()[0]

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        require_writable(cred)
        if not self.home.is_dir():
            raise StoreError(f"Codex home {self.home} does not exist")
        try:
            with self.locks.outer():
                return self._write_locked(cred, supersedes)
        except LockError as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from exc

    def _write_locked(self, cred: Credential, supersedes: Credential | None) -> bool:
        reading, doc = self.read_document()
        if reading.state is ReadState.ERROR:
            raise StoreError(f"cannot write {self.path}: {reading.detail}")
        why = refusal(reading, doc, cred, supersedes)
        if why is not None:
            self.refusals.note(why, reading.valid, cred)
            return False
        data = render_auth(auth_with(doc, cred))
        with self.locks.inner():
            self.written = atomic_write(write_target(self.path), data,
                                        temp_prefix=TEMP_PREFIX, temp_suffix=TEMP_SUFFIX)
        return True
