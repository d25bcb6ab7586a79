"""``$CODEX_HOME/auth.json`` as Codex CLI reads and writes it (notes/codex.md, "Locks and the
atomic write"), for the simulated Codex session.

Reading keeps only the fields Codex's ``AuthDotJson`` knows (serde drops the rest, so an outside
change to an unknown key is no change to Codex). Writing takes Codex's two locks, only around the
write and never around a refresh request:

1. ``flock(LOCK_EX)`` on ``auth.lock`` (created 0666): Codex blocks; here the wait is bounded
   (``LockTimeout``), polled on a real monotonic clock;
2. re-read ``auth.json`` (the caller's ``update`` builds the new document from it);
3. ``flock(LOCK_EX | LOCK_NB)`` on ``auth.json.lock`` (created 0600), retried a bounded number
   of times;
4. ``.auth-XXXXXX`` (O_EXCL, 0600), pretty JSON, fsync, ``rename`` over ``auth.json`` (no
   directory fsync, as Codex);
5. release ``auth.json.lock``, then ``auth.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.codex.tokens import account_of, credential_from_auth, format_time
from agent.credential import Credential
from agent.errors import StoreError
from agent.fsutil import read_bytes

AUTH_FILE = "auth.json"
AUTH_LOCK = "auth.lock"
AUTH_JSON_LOCK = "auth.json.lock"
MAX_AUTH_BYTES = 256 * 1024
# AuthDotJson's fields and TokenData's: everything else is dropped on read and so on write.
KNOWN_KEYS = ("auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh", "agent_identity",
              "personal_access_token")
TOKEN_KEYS = ("id_token", "access_token", "refresh_token", "account_id")
POLL_S = 0.005
LOCK_WAIT_S = 30.0
JSON_LOCK_RETRIES = 40
JSON_LOCK_RETRY_S = 0.01


class LockTimeout(Exception):
    """A write lock was not had within its bound (Codex itself would wait on)."""


def known_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` as Codex's serde sees it: unknown keys gone, in ``tokens`` too."""
    out = {key: doc[key] for key in KNOWN_KEYS if key in doc}
    tokens = out.get("tokens")
    if isinstance(tokens, dict):
        out["tokens"] = {key: tokens[key] for key in TOKEN_KEYS if key in tokens}
    return out


@dataclass(frozen=True)
class Snapshot:
    """One reading of the store as Codex's AuthManager caches it."""

    doc: dict[str, Any]  # known fields only
    cred: Credential

    @property
    def access_token(self) -> str:
        return self.cred.access_token

    @property
    def refresh_token(self) -> str:
        return self.cred.refresh_token

    @property
    def expires_at(self) -> float:
        return self.cred.expires_at

    @property
    def account_id(self) -> str | None:
        return account_of(self.cred)

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Snapshot | None:
        known = known_fields(doc)
        cred = credential_from_auth(known)
        return cls(known, cred) if cred is not None else None


def login_document(tokens: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A fresh login as Codex saves it."""
    return {"OPENAI_API_KEY": None, "tokens": known_fields({"tokens": dict(tokens)})["tokens"],
            "last_refresh": format_time(now)}


def refreshed_document(stored: Mapping[str, Any] | None, fallback: Mapping[str, Any],
                       answer: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Codex's ``persist_tokens``: the stored document (else the cached one), with the fields
    the answer has replaced and ``last_refresh`` now."""
    doc = known_fields(stored if stored is not None else fallback)
    old = doc.get("tokens")
    tokens = dict(old) if isinstance(old, dict) else {}
    for key in ("id_token", "access_token", "refresh_token"):
        value = answer.get(key)
        if isinstance(value, str) and value:
            tokens[key] = value
    doc["tokens"] = tokens
    doc["last_refresh"] = format_time(now)
    return doc


class CodexStore:
    """One ``CODEX_HOME``'s ``auth.json``, read and written the way Codex does."""

    def __init__(self, home: Path, *, lock_wait_s: float = LOCK_WAIT_S,
                 json_lock_retries: int = JSON_LOCK_RETRIES,
                 json_lock_retry_s: float = JSON_LOCK_RETRY_S,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_lock_wait: Callable[[str], None] | None = None) -> None:
        self.home = home
        self.path = home / AUTH_FILE
        self.lock_wait_s = lock_wait_s
        self.json_lock_retries = json_lock_retries
        self.json_lock_retry_s = json_lock_retry_s
        self._monotonic = monotonic
        self._on_lock_wait = on_lock_wait
        self._pause = threading.Event()  # never set: a bounded pause between lock attempts

    def read_doc(self) -> dict[str, Any] | None:
        """The document's known fields; None when there is none or it does not parse."""
        try:
            raw = read_bytes(self.path, MAX_AUTH_BYTES)
        except StoreError:
            return None
        if raw is None or len(raw) > MAX_AUTH_BYTES:
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        return known_fields(doc) if isinstance(doc, dict) else None

    def read(self) -> Snapshot | None:
        doc = self.read_doc()
        return Snapshot.of(doc) if doc is not None else None

    def save(self, update: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Write ``update(the stored document)`` under both locks; returns what was written."""
        with self._flock(AUTH_LOCK, 0o666, blocking=True):
            doc = known_fields(update(self.read_doc()))
            with self._flock(AUTH_JSON_LOCK, 0o600, blocking=False):
                self._replace(json.dumps(doc, indent=2).encode())
        return doc

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int, *, blocking: bool) -> Iterator[None]:
        fd = os.open(self.home / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            self._acquire(fd, name, blocking)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _acquire(self, fd: int, name: str, blocking: bool) -> None:
        deadline = self._monotonic() + self.lock_wait_s
        tries = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                tries += 1
                if tries == 1 and self._on_lock_wait is not None:
                    self._on_lock_wait(name)
            if blocking and self._monotonic() >= deadline:
                raise LockTimeout(f"{name} held for more than {self.lock_wait_s:g} s")
            if not blocking and tries > self.json_lock_retries:
                raise LockTimeout(f"{name} busy after {tries} tries")
            self._pause.wait(POLL_S if blocking else self.json_lock_retry_s)

    def _replace(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".auth-", dir=self.home)  # O_EXCL, 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
