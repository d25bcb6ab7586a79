"""Build the runtime objects from validated settings (config first, then objects)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import KeychainUnavailable
from agent.ledger import Ledger
from agent.stores.base import Store
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.sink import SinkStore

# keyring (through the keychain store) and pydantic (through the config) are imported only when
# used: `credsync token` builds its stores here and its start-up time matters.
if TYPE_CHECKING:
    from agent.config import Settings
    from agent.stores.keychain import KeychainBackend
    from agent.stores.windows.credman import CredentialVault


def _system_backend() -> KeychainBackend:
    from agent.stores.keychain import system_backend

    return system_backend()


class LazyBackend:
    """The system keychain, looked up again on each call until it is there.

    A keychain that is not up yet when the agent starts (or that goes away and comes back) must
    not be given up on: every call retries the lookup and fails with KeychainUnavailable.
    """

    def __init__(self, find: Callable[[], KeychainBackend] = _system_backend) -> None:
        self._find = find
        self._backend: KeychainBackend | None = None

    def _get(self) -> KeychainBackend:
        if self._backend is None:
            self._backend = self._find()
        return self._backend

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._get(), name)(*args)
        except KeychainUnavailable:
            raise
        except Exception:
            self._drop()  # look it up afresh next time (daemon restarted, bus moved)
            raise

    def _drop(self) -> None:
        backend, self._backend = self._backend, None
        close = getattr(backend, "close", None)
        if callable(close):  # a backend that keeps a connection: not left to the GC
            close()

    def get_password(self, service: str, username: str) -> str | None:
        value = self._call("get_password", service, username)
        return value if isinstance(value, str) else None

    def set_password(self, service: str, username: str, password: str) -> None:
        self._call("set_password", service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        self._call("delete_password", service, username)

    def rust_keyring_items(self) -> LazyBackend:
        """Codex's items (keyring-rs' scheme) on the same keychain, looked up as lazily."""
        from agent.stores.codex_keyring import codex_backend

        find = self._find
        return LazyBackend(lambda: codex_backend(find()))


def file_stores(settings: Settings) -> list[ClaudeFileStore]:
    return [ClaudeFileStore(d) for d in settings.claude.config_dirs]


def build_stores(settings: Settings, backend: KeychainBackend | None = None,
                 platform: str = sys.platform, security: Path | None = None,
                 vault: CredentialVault | None = None) -> list[Store]:
    """The stores these settings name on ``platform``; on darwin the Keychain items go through
    ``security`` (default /usr/bin/security; tests pass the double's executable), on win32
    Credential Manager through ``vault`` (tests pass the double)."""
    stores: list[Store] = []
    if platform == "win32":
        # Each dir's login is the CLI's Credential Manager item when the CLI uses one, else
        # (and as the CLI's fallback) its file: one store decides, as the CLI does.
        stores.extend(windows_stores(settings, vault))
    else:
        stores.extend(file_stores(settings))
    if platform == "darwin":
        # The CLI's own store there: watched even with `keychain = false` (then never written).
        stores.extend(macos_stores(settings, security=security,
                                   read_only=not settings.claude.keychain))
    elif settings.claude.keychain and settings.claude.config_dirs:
        # credsync's own copy (Secret Service, or Credential Manager item "credsync" on
        # Windows); never one of Claude Code's items.
        from agent.stores.keychain import keychain_stores

        stores.extend(keychain_stores(settings.claude.config_dirs, backend or LazyBackend()))
    stores.extend(SinkStore(s.path, s.format, s.env_var) for s in settings.sinks)
    return stores


def windows_stores(settings: Settings, vault: CredentialVault | None = None,
                   env: dict[str, str] | None = None, home: Path | None = None) -> list[Store]:
    """Claude Code's own Windows stores: the Credential Manager item (in the CLI's layout,
    through advapi32) with the file as the CLI's fallback, per distinct login."""
    import logging
    import os

    from agent.stores.windows.credman import VaultError, win_vault
    from agent.stores.windows.store import claude_credman_stores

    if vault is None:
        try:
            vault = win_vault()
        except VaultError as exc:
            logging.getLogger("credsync.credman").warning(
                "Credential Manager cannot be used (%s): keeping the files only", exc)
            return list(file_stores(settings))
    return claude_credman_stores(
        list(settings.claude.config_dirs), vault, home=home or Path.home(),
        env=dict(os.environ) if env is None else env,
        securestorage_dir=settings.claude.securestorage_dir)


def macos_stores(settings: Settings, security: Path | None = None,
                 read_only: bool = False) -> list[Store]:
    """Claude Code's own Keychain items, through /usr/bin/security only (never keyring)."""
    import os

    from agent.stores.macos.security import SECURITY, SecurityTool
    from agent.stores.macos.store import WriteRecords, claude_keychain_stores

    records = WriteRecords(ledger_of(settings).path / "keychain-writes.json")
    return list(claude_keychain_stores(
        list(settings.claude.config_dirs), SecurityTool(security or SECURITY),
        home=Path.home(), env=dict(os.environ),
        securestorage_dir=settings.claude.securestorage_dir, records=records,
        read_only=read_only))


def ledger_of(settings: Settings) -> Ledger:
    """The ledger of the login these settings keep: one scope per set of config dirs."""
    return Ledger(Path(settings.agent.state_dir), settings.claude.config_dirs)


def close_stores(stores: list[Store]) -> None:
    for store in stores:
        store.close()
