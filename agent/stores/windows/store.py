"""Claude Code's login on Windows as one store: Credential Manager when the CLI uses it, else
(and as the CLI's fallback) ``<storage dir>/.credentials.json``.

What the CLI does (2.1.332, ``windows-credman-with-plaintext-fallback``, the wrapper ``ee`` and
the store ``L`` at line 592475 of ``strings -n 8 claude.exe``; README, "Windows"):
- reads Credential Manager first; only when it holds no item (or one it cannot parse, or when
  Credential Manager cannot be used at all) does it read the file;
- writes under ``.storage-write.lock`` after a strict re-read; a failed read skips the write;
- writes Credential Manager, reads it back and compares; when the item did not exist before,
  it then deletes the file; when Credential Manager refuses, it writes the file instead and
  deletes the item.

What credsync does (the decisions are in the README):
- with the switch off (``identity.CredmanSwitch``): exactly the file, as ``ClaudeFileStore``;
- on: reads as the CLI reads (the item, then the file); writes under the CLI's lock with a
  strict re-read inside it, to the item when there is one (in the CLI's layout,
  ``chunks``, then read back as the CLI reads), else to the file the CLI is reading. It never
  creates the item, never deletes the file or the item, never writes after a failed read;
- a failed write of the item is put back to the document read before it, when it can be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.credential import Credential, Reading, ReadState, merged_document, parse_document
from agent.errors import KeychainUnavailable, StoreError
from agent.locks.mkdirlock import release_orphans, under_storage_lock
from agent.stores.base import Role, Store
from agent.stores.claude_file import WRITE_LOCK_TIMEOUT_S, ClaudeFileStore, require_writable
from agent.stores.windows import chunks
from agent.stores.windows.credman import ERROR_NO_SUCH_LOGON_SESSION, CredentialVault, VaultError
from agent.stores.windows.identity import CredmanIdentity

log = logging.getLogger("credsync.credman")

POLL_S = 5.0  # the CLI itself serves reads of its item up to 30 s old


@dataclass(frozen=True)
class Snapshot:
    """One read, as the CLI would read: what, and the item's own text."""

    reading: Reading
    doc: dict[str, Any] | None  # the document a write keeps every other key of
    item_text: str | None = None  # the item's text (None: no item)
    failed: str | None = None  # the read failed: nothing may be written


class WindowsCredmanStore(Store):
    kind = "keychain"
    role = Role.HOLDER
    poll_s: float | None = POLL_S

    def __init__(self, ident: CredmanIdentity, vault: CredentialVault, file: ClaudeFileStore,
                 in_use: Callable[[], bool], *, config_dir: Path | None = None,
                 lock_timeout_s: float = WRITE_LOCK_TIMEOUT_S) -> None:
        self.ident = ident
        self.vault = vault
        self.file = file  # the CLI's plaintext fallback, in the storage dir
        self.in_use = in_use
        self.config_dir = config_dir
        self.lock_timeout_s = lock_timeout_s
        self.name = f"credman:{ident.target}"
        self.location = f"Credential Manager {ident.target!r}, else {file.path}"
        self._seen: object = None
        self._blocker: str | None = None

    # ----- reading -----------------------------------------------------------------------
    def _stamp(self) -> object:
        on = self.in_use()
        items = chunks.stamp(self.vault, self.ident) if on else frozenset()
        try:
            st = self.file.path.stat()
            sig: object = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        return on, items, sig

    def changed(self) -> bool:
        """Cheap: item names and LastWritten (no blob), the file's stat, the switch."""
        try:
            return self._seen is None or self._stamp() != self._seen
        except StoreError:
            return True  # read, and report what fails

    def read(self) -> Reading:
        return self.read_document()[0]

    def read_document(self) -> tuple[Reading, dict[str, Any] | None]:
        try:
            stamp: object = self._stamp()
        except StoreError:
            stamp = None
        snap = self.snapshot()
        self._blocker = snap.failed
        self._seen = stamp if snap.failed is None else None
        return snap.reading, snap.doc

    def snapshot(self) -> Snapshot:
        """A strict read: the item (every piece), then the file when the CLI would."""
        if not self.in_use():
            return self._from_file(None)
        try:
            text = chunks.read_text(self.vault, self.ident)
        except VaultError as exc:
            if exc.code == ERROR_NO_SUCH_LOGON_SESSION:
                return self._from_file(None)  # no vault for this logon: the CLI uses the file
            return self._failed(str(exc))
        except chunks.ChunkError as exc:
            return self._failed(str(exc))
        if text is None:
            return self._from_file(None)
        reading, doc = parse_document(text.encode("utf-8"))
        if doc is None:
            # The CLI cannot parse the item and reads the file; a write replaces the item.
            fallback = self._from_file(text)
            if fallback.reading.valid is not None:
                return fallback
            detail = f"Credential Manager item unreadable ({reading.detail})"
            return Snapshot(Reading(ReadState.INVALID, detail=detail), fallback.doc, text)
        return Snapshot(reading, doc, text)

    def _from_file(self, item_text: str | None) -> Snapshot:
        reading, doc = self.file.read_document()
        return Snapshot(reading, doc, item_text)

    @staticmethod
    def _failed(detail: str) -> Snapshot:
        why = f"{detail}; Claude Code cannot read its login either, and credsync writes nothing"
        return Snapshot(Reading(ReadState.ERROR, detail=detail), None, failed=why)

    def write_blocker(self) -> str | None:
        """A login the item cannot take must not be made: the CLI would go on with the old
        refresh token."""
        return self._blocker

    # ----- writing -----------------------------------------------------------------------
    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        require_writable(cred)
        return under_storage_lock(self.ident.storage_dir, self.lock_timeout_s, self.name,
                                  lambda: self._write_locked(cred, supersedes))

    def _write_locked(self, cred: Credential, supersedes: Credential | None) -> bool:
        snap = self.snapshot()
        self._blocker = snap.failed
        if snap.failed is not None:
            raise KeychainUnavailable(f"{self.name}: {snap.failed}")
        if snap.item_text is None:
            return self.file.write_holding_lock(cred, supersedes)  # what the CLI reads now
        current = snap.reading.valid
        if current is not None and (current.same_tokens(cred)
                                    or current.newer_than(cred, supersedes)):
            return False
        self._put(chunks.document_text(merged_document(snap.doc, cred)), snap.item_text)
        self._seen = None
        return True

    def _put(self, text: str, before: str) -> None:
        try:
            chunks.write_text(self.vault, self.ident, text)
        except chunks.TooLarge as exc:
            raise StoreError(f"{self.name}: {exc}") from exc
        except VaultError as exc:
            raise KeychainUnavailable(f"{self.name}: {exc}; {self._put_back(before)}") from exc
        try:
            back = chunks.read_text(self.vault, self.ident)
        except StoreError as exc:
            back, why = None, str(exc)
        else:
            why = "what was read back is not what was written"
        if back != text:
            raise StoreError(f"{self.name}: the write was not read back ({why}); "
                             "what the item holds is read again next round")

    def _put_back(self, before: str) -> str:
        # A write cut short can leave pieces of two documents; the one read before is whole.
        try:
            if chunks.read_text(self.vault, self.ident) == before:
                return "the item still holds the previous login"
            chunks.write_text(self.vault, self.ident, before)
        except StoreError as exc:
            log.warning("%s: the previous login could not be put back: %s", self.name, exc)
            return "the previous login could not be put back"
        return "the previous login was put back"

    def release_orphaned_locks(self) -> list[Path]:
        storage = self.ident.storage_dir
        return release_orphans(storage) if storage.is_dir() else []


def claude_credman_stores(config_dirs: list[Path], vault: CredentialVault, *, home: Path,
                          env: dict[str, str], securestorage_dir: str | None) -> list[Store]:
    """One store per distinct Credential Manager login of these config dirs (with
    CLAUDE_SECURESTORAGE_CONFIG_DIR set they all share one). A dir whose item the CLI could not
    use keeps its file store."""
    from agent.stores.macos.identity import IdentityError, session_env
    from agent.stores.windows.identity import FORCE_ENV, CredmanSwitch, identity

    stores: list[Store] = []
    targets: set[str] = set()
    for config_dir in config_dirs:
        session = session_env(config_dir, home, securestorage_dir, env)
        try:
            ident = identity(session, home)
        except IdentityError as exc:
            log.warning("no Credential Manager item for %s: %s", config_dir, exc)
            stores.append(ClaudeFileStore(config_dir))
            continue
        if ident.target.casefold() in targets:
            continue
        targets.add(ident.target.casefold())
        switch = CredmanSwitch(session, env.get(FORCE_ENV), home)
        stores.append(WindowsCredmanStore(ident, vault, ClaudeFileStore(ident.storage_dir),
                                          switch, config_dir=config_dir))
    return stores
