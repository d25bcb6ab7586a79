"""A Codex home in ``cli_auth_credentials_store = "auto"``: one store that reads as Codex reads.

Codex's ``AutoAuthStorage`` loads the keyring item when there is one, else ``auth.json`` (also
when the keyring fails), and saves to the keyring (deleting ``auth.json``), falling back to the
file when the keyring fails. One login, one store: the item when it exists, else the file.
Two holder stores would misjudge Codex's own move from the file to the keyring (it deletes
``auth.json``) as a logout, and writing a missing item would move Codex's login for it.

- read: the item's reading when there is an item; else (no item, or the keyring failed) the
  file's. When the keyring failed and there is no file either, the keyring's ERROR (never a
  MISSING that would read as a logout).
- write: to the item when there is one; else to the file (when the keyring failed, only over
  a file that is there: where else Codex looks cannot be known).
"""

from __future__ import annotations

from pathlib import Path

from agent.credential import Credential, Reading, ReadState
from agent.errors import StoreError
from agent.stores.base import Role, Store
from agent.stores.codex_file import CodexFileStore, require_writable
from agent.stores.codex_keyring import CodexKeyringStore, holds_item


class CodexAutoStore(Store):
    kind = "codex-auto"
    role = Role.HOLDER

    def __init__(self, file: CodexFileStore, keyring: CodexKeyringStore) -> None:
        self.file = file
        self.keyring = keyring
        self.name = file.name
        self.location = f"keyring {keyring.location}, else {file.path}"
        self.config_dir = None
        self.poll_s = keyring.poll_s

    @property
    def session_dir(self) -> Path:
        return self.file.home

    @property
    def watch_path(self) -> Path:
        return self.file.path

    def changed(self) -> bool:
        return self.keyring.changed()

    def read(self) -> Reading:
        item = self.keyring.read_document()
        if holds_item(item) and item[0].state is not ReadState.ERROR:
            return item[0]
        on_file = self.file.read()
        if item[0].state is ReadState.ERROR and on_file.state is ReadState.MISSING:
            return item[0]
        return on_file

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        require_writable(cred)
        item = self.keyring.read_document()
        if item[0].state is ReadState.ERROR:
            if self.file.read().state is ReadState.MISSING:
                raise StoreError(f"cannot write {self.name}: {item[0].detail}")
            return self._write_file(cred, supersedes)
        if holds_item(item):
            return self.keyring.write(cred, supersedes)
        return self._write_file(cred, supersedes)

    def _write_file(self, cred: Credential, supersedes: Credential | None) -> bool:
        changed = self.file.write(cred, supersedes)
        self.written = self.file.written  # the agent tells its own file writes by it
        return changed

    def close(self) -> None:
        self.keyring.close()
