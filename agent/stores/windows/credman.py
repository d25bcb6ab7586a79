"""Windows Credential Manager through advapi32: the only module that calls the Windows API.

What Bun.secrets does on Windows (oven-sh/bun ``src/bun.js/bindings/SecretsWindows.cpp`` and
``JSSecrets.cpp``), which is what the CLI's items look like:
- a generic credential (``CRED_TYPE_GENERIC``), ``TargetName`` = ``service/name`` (UTF-16),
  ``UserName`` = name, persisted ``CRED_PERSIST_LOCAL_MACHINE``, no comment, no attributes;
- the blob is the **UTF-8** bytes of the value (not UTF-16 as most Windows programs, and
  python-keyring, write it), read back as UTF-8; an empty blob reads as no value; setting an
  empty value deletes the item;
- ``ERROR_NOT_FOUND`` (1168) is "no item" (get: null, delete: false); any other error is a
  failure with its code.

Windows' limits (wincred.h): a blob holds at most ``CRED_MAX_CREDENTIAL_BLOB_SIZE`` = 5 * 512
bytes (CredWriteW fails with 1783 ``RPC_X_BAD_STUB_DATA`` beyond); a generic TargetName at most
32767 characters, a UserName 513. Target names compare case-insensitively.

``CredentialVault`` is the small interface the store uses; ``win_vault()`` gives it through
ctypes (``_advapi32``, imported only on win32), ``agent.sim.credman.CredmanDouble`` for tests.
Every Windows error is a ``VaultError`` naming the operation, the target and the code, never
the blob.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol

from agent.errors import StoreError

CRED_TYPE_GENERIC = 1
CRED_PERSIST_LOCAL_MACHINE = 2
CRED_MAX_CREDENTIAL_BLOB_SIZE = 5 * 512
CRED_MAX_GENERIC_TARGET_NAME_LENGTH = 32767
CRED_MAX_USERNAME_LENGTH = 513

ERROR_ACCESS_DENIED = 5
ERROR_NOT_ENOUGH_MEMORY = 8  # seen when the vault is full
ERROR_INVALID_PARAMETER = 87
ERROR_INVALID_FLAGS = 1004
ERROR_NOT_FOUND = 1168
ERROR_NO_SUCH_LOGON_SESSION = 1312  # no credential set for this logon (some service logons)
RPC_X_BAD_STUB_DATA = 1783  # the blob is over the size limit
ERROR_BAD_USERNAME = 2202

_NAMES = {
    ERROR_ACCESS_DENIED: "access denied",
    ERROR_NOT_ENOUGH_MEMORY: "not enough memory (the vault may be full)",
    ERROR_INVALID_PARAMETER: "invalid parameter",
    ERROR_INVALID_FLAGS: "invalid flags",
    ERROR_NOT_FOUND: "not found",
    ERROR_NO_SUCH_LOGON_SESSION: "no credential store for this logon session",
    RPC_X_BAD_STUB_DATA: "the stub received bad data (blob too large)",
    ERROR_BAD_USERNAME: "bad user name",
}


class VaultError(StoreError):
    """A Credential Manager call failed; ``code`` is the Windows error."""

    def __init__(self, op: str, target: str, code: int, detail: str = "") -> None:
        what = detail or _NAMES.get(code, "Windows error")
        super().__init__(f"Credential Manager {op} of {target!r} failed: error {code} ({what})")
        self.op, self.target, self.code = op, target, code


@dataclass(frozen=True)
class Item:
    """What an enumeration tells of one item: its name and when it was last written."""

    target: str
    last_written: int  # FILETIME, 100 ns since 1601


class CredentialVault(Protocol):
    """Generic credentials of the current user, by TargetName."""

    def read(self, target: str) -> bytes | None:
        """The blob (``b""`` for an empty one), or None when there is no such item."""
        ...

    def write(self, target: str, user: str, blob: bytes) -> None:
        """Create or replace the item, as Bun does (generic, local machine)."""
        ...

    def delete(self, target: str) -> bool:
        """False when there was no such item."""
        ...

    def items(self, prefix: str) -> list[Item]:
        """Every item whose TargetName starts with ``prefix`` (no blobs)."""
        ...


def check_write(target: str, user: str, blob: bytes) -> None:
    """Windows' own checks of a CredWriteW, made before the call (the double makes them too)."""
    if not target or len(target) > CRED_MAX_GENERIC_TARGET_NAME_LENGTH:
        raise VaultError("write", target[:80], ERROR_INVALID_PARAMETER, "target name length")
    if len(user) > CRED_MAX_USERNAME_LENGTH:
        raise VaultError("write", target, ERROR_BAD_USERNAME)
    if len(blob) > CRED_MAX_CREDENTIAL_BLOB_SIZE:
        raise VaultError("write", target, RPC_X_BAD_STUB_DATA)


def win_vault() -> CredentialVault:
    """The current user's Credential Manager (advapi32 through ctypes). VaultError elsewhere
    than on Windows, or when advapi32 cannot be loaded."""
    if sys.platform == "win32":
        from agent.stores.windows._advapi32 import Advapi32

        return Advapi32()
    raise VaultError("load", "advapi32", ERROR_INVALID_PARAMETER,
                     "Credential Manager exists on Windows only")
