"""The Codex CLI's own keyring item: service ``Codex Auth``, account ``cli|`` + the first 16 hex
of sha256 of the canonical ``CODEX_HOME``, secret the compact ``AuthDotJson`` JSON
(``../shared/notes/codex.md``; Codex's ``compute_store_key``).

Codex reaches the item through keyring-rs, so credsync must write it where keyring-rs searches:
on Linux that is ``agent.stores.secretservice.RustKeyringItems`` (attributes ``service``,
``username``, ``target=default``). An item python-keyring writes has no ``target`` and would be
a second item beside Codex's, which Codex never reads. Only that backend (and the in-memory one
for tests) is used; any other (keyring's own Secret Service client, libsecret, macOS, Windows,
where keyring-rs's item layout is unverified) makes the store unavailable, saying why.

Same rules as the file (``agent.codex.authdoc.refusal``): never backwards, never across
accounts, never over an API key, every key kept. Keyrings cannot be watched: polled.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agent.codex.authdoc import parse_auth, refusal, render_auth
from agent.codex.tokens import auth_with
from agent.credential import Credential, Reading, ReadState
from agent.errors import KeychainUnavailable
from agent.stores.base import Role, Store
from agent.stores.codex_file import RefusalLog, require_writable
from agent.stores.keychain import KeychainBackend, KeychainCalls, MemoryKeyring, UnavailableBackend

SERVICE = "Codex Auth"
ACCOUNT_PREFIX = "cli|"
POLL_S = 5.0
NO_ITEM = "no keyring item"
Document = tuple[Reading, dict[str, Any] | None]


def store_key(home: Path | str) -> str:
    """Codex's account for a home: the path canonicalized as Rust's ``canonicalize`` does
    (``realpath``, every symlink resolved, no trailing slash; the path as given when that fails,
    e.g. it does not exist), its bytes read lossily as UTF-8, sha256, the first 16 hex."""
    try:
        canonical = os.path.realpath(home, strict=True)
    except (OSError, ValueError):
        canonical = os.fspath(home)
    text = os.fsencode(canonical).decode("utf-8", "replace")  # Rust's to_string_lossy
    return ACCOUNT_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@runtime_checkable
class RustKeyringCapable(Protocol):
    """A backend that can reach items in keyring-rs's scheme (``SecretServiceKeyring``)."""

    def rust_keyring_items(self) -> KeychainBackend: ...


def codex_backend(backend: KeychainBackend) -> KeychainBackend:
    """The backend that reads and writes Codex's item as keyring-rs does, or one that says why
    there is none."""
    if isinstance(backend, RustKeyringCapable):
        return backend.rust_keyring_items()
    if type(backend) in (MemoryKeyring, UnavailableBackend):  # exact: a subclass may store anywhere
        return backend
    name = f"{type(backend).__module__}.{type(backend).__qualname__}"
    return UnavailableBackend(
        f"Codex's keyring item is kept only through credsync's Secret Service client (Linux); "
        f"keyring backend {name} would not write it where Codex (keyring-rs) looks")


class CodexKeyringStore(Store):
    kind = "codex-keyring"
    role = Role.HOLDER
    poll_s: float | None = POLL_S

    def __init__(self, home: Path, backend: KeychainBackend, *,
                 calls: KeychainCalls | None = None) -> None:
        self.home = home
        self.backend = codex_backend(backend)
        self.service = SERVICE
        self.account = store_key(home)
        self.name = f"codex-keyring:{home}"
        self.location = f"service={SERVICE!r} account={self.account!r}"
        self.config_dir = None
        self.refusals = RefusalLog(self.name)
        self._calls = calls if calls is not None else KeychainCalls()
        self._seen: tuple[str | None] | None = None  # (the secret last read or written,)

    def _get(self) -> str | None:
        text = self.backend.get_password(self.service, self.account)
        self._seen = (text,)
        return text

    def changed(self) -> bool:
        """Does the item's secret differ from the last one read or written? (One call.)"""
        before = self._seen
        try:
            self._calls.call(self._get, "read")
        except KeychainUnavailable:
            return True  # read, and report what fails
        return before is None or self._seen != before

    def start_document(self) -> Callable[[], Document]:
        """Queue a read; the function returned waits for (reading, document). An item holding
        no login has a document; no item has none (MISSING with ``NO_ITEM``)."""
        try:
            pending = self._calls.submit(self._get, "read")
        except KeychainUnavailable as exc:
            failed: Document = (Reading(ReadState.ERROR, detail=str(exc)), None)
            return lambda: failed

        def finish() -> Document:
            try:
                return _document(pending.result())
            except KeychainUnavailable as exc:
                return Reading(ReadState.ERROR, detail=str(exc)), None
        return finish

    @property
    def session_dir(self) -> Path:
        return self.home

    def read_document(self) -> Document:
        return self.start_document()()

    def start_read(self) -> Callable[[], Reading]:
        finish = self.start_document()
        return lambda: finish()[0]

    def read(self) -> Reading:
        return self.start_read()()

    def start_write(self, cred: Credential,
                    supersedes: Credential | None = None) -> Callable[[], bool]:
        require_writable(cred)
        return self._calls.submit(lambda: self._write_now(cred, supersedes), "write").result

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        return self.start_write(cred, supersedes)()

    def _write_now(self, cred: Credential, supersedes: Credential | None) -> bool:
        # On the worker thread: read, decide, set as one job. A failed read fails the write.
        reading, doc = _document(self._get())
        why = refusal(reading, doc, cred, supersedes)
        if why is not None:
            self.refusals.note(why, reading.valid, cred)
            return False
        text = render_auth(auth_with(doc, cred), compact=True).decode("ascii")
        self.backend.set_password(self.service, self.account, text)
        self._seen = (text,)
        return True

    def close(self) -> None:
        self._calls.close()


def _document(raw: str | None) -> Document:
    if raw is None:
        return Reading(ReadState.MISSING, detail=NO_ITEM), None
    return parse_auth(raw.encode("utf-8", "surrogatepass"))


def holds_item(document: Document) -> bool:
    """Is there an item (whatever it holds), as Codex's ``auto`` mode asks?"""
    reading, doc = document
    return not (reading.state is ReadState.MISSING and doc is None)
