"""A faithful Windows Credential Manager double, so the Windows store runs on Linux CI.

It implements ``agent.stores.windows.credman.CredentialVault`` with Windows' behaviour for
generic credentials (wincred.h; Wine's dlls/advapi32/cred.c for the call semantics):
- TargetName is unique per type and compared case-insensitively; the name as last written is
  kept. CredWriteW replaces an item whole (blob, user name, LastWritten);
- limits: blob ``CRED_MAX_CREDENTIAL_BLOB_SIZE`` (2560 bytes: 1783 beyond), TargetName 32767
  characters, UserName 513 (2202 beyond);
- ``ERROR_NOT_FOUND`` (1168) for a read or delete of no item (the vault answers None/False,
  as ``CredentialVault`` maps it); CredEnumerateW with ``prefix*`` matches case-insensitively
  and gives LastWritten, a FILETIME that moves on every write.
Faults are injected per call (``fail``): any Windows error code, on the nth matching call,
for one operation and targets starting with a prefix; ``unavailable`` answers every call
with 1312 (no credential set for the logon session).

State is in memory, or in ``root/vault.json`` (replaced atomically under an fcntl lock) when
several processes must share one vault.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.stores.windows.credman import (
    ERROR_NO_SUCH_LOGON_SESSION,
    Item,
    VaultError,
    check_write,
)

EPOCH_AS_FILETIME = 116_444_736_000_000_000  # 1970-01-01 in 100 ns units since 1601


@dataclass
class Fault:
    op: str  # "read", "write", "delete", "enumerate" or "*"
    prefix: str  # targets starting with this (case-insensitive); "" for all
    code: int
    skip: int = 0  # matching calls let through before the failing ones
    times: int = 1  # failing calls, then the fault is spent (-1: forever)

    def hits(self, op: str, target: str) -> bool:
        if self.op not in ("*", op) or not target.casefold().startswith(self.prefix.casefold()):
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        if self.times == 0:
            return False
        self.times -= 1
        return True


@dataclass
class Calls:
    reads: int = 0
    writes: int = 0
    deletes: int = 0
    enumerations: int = 0
    log: list[tuple[str, str]] = field(default_factory=list)  # (op, target): never a blob


class CredmanDouble:
    def __init__(self, root: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.clock = clock
        self.calls = Calls()
        self.faults: list[Fault] = []
        self.unavailable = False
        self._items: dict[str, dict[str, Any]] = {}
        self._last = 0
        self._mutex = threading.Lock()
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    # ----- fault injection ---------------------------------------------------------------
    def fail(self, op: str, code: int, prefix: str = "", skip: int = 0, times: int = 1) -> None:
        self.faults.append(Fault(op, prefix, code, skip, times))

    def _check(self, op: str, target: str) -> None:
        self.calls.log.append((op, target))
        if self.unavailable:
            raise VaultError(op, target, ERROR_NO_SUCH_LOGON_SESSION)
        for fault in self.faults:
            if fault.hits(op, target):
                raise VaultError(op, target, fault.code)

    # ----- state ---------------------------------------------------------------------------
    @contextmanager
    def _state(self, change: bool) -> Iterator[dict[str, dict[str, Any]]]:
        with self._mutex:
            if self.root is None:
                yield self._items
                return
            lock = os.open(self.root / "vault.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                path = self.root / "vault.json"
                items = json.loads(path.read_text()) if path.exists() else {}
                yield items
                if change:
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(items))
                    os.replace(tmp, path)
            finally:
                os.close(lock)

    def _filetime(self) -> int:
        now = int(self.clock() * 10_000_000) + EPOCH_AS_FILETIME
        self._last = max(now, self._last + 1)  # every write moves LastWritten
        return self._last

    # ----- CredentialVault -----------------------------------------------------------------
    def read(self, target: str) -> bytes | None:
        self.calls.reads += 1
        self._check("read", target)
        with self._state(False) as items:
            found = items.get(target.casefold())
            return bytes.fromhex(found["blob"]) if found is not None else None

    def write(self, target: str, user: str, blob: bytes) -> None:
        self.calls.writes += 1
        self._check("write", target)
        check_write(target, user, blob)
        with self._state(True) as items:
            items[target.casefold()] = {"target": target, "user": user, "blob": blob.hex(),
                                        "written": self._filetime()}

    def delete(self, target: str) -> bool:
        self.calls.deletes += 1
        self._check("delete", target)
        with self._state(True) as items:
            return items.pop(target.casefold(), None) is not None

    def items(self, prefix: str) -> list[Item]:
        self.calls.enumerations += 1
        self._check("enumerate", prefix)
        with self._state(False) as items:
            return [Item(v["target"], v["written"]) for k, v in sorted(items.items())
                    if k.startswith(prefix.casefold())]

    # ----- for tests -------------------------------------------------------------------------
    def targets(self) -> list[str]:
        with self._state(False) as items:
            return sorted(v["target"] for v in items.values())

    def user_of(self, target: str) -> str | None:
        with self._state(False) as items:
            found = items.get(target.casefold())
            return None if found is None else str(found["user"])
