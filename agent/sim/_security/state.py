"""The double's keychain: one JSON document in a directory, shared by every process using it.

Every read and change happens under an exclusive ``flock`` on ``<dir>/lock`` (held for
milliseconds, never across a wait for a dialog or ``delay_s``), and a change replaces
``<dir>/db.json`` with ``os.replace``: a process killed at any moment leaves the old document or
the new one, never half of one. Not fsynced: safe against kills, not against power loss.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SECURITY_TOOL = "/usr/bin/security"
TOOL_PARTITION = "apple-tool:"
# What securityd stamps on an item /usr/bin/security writes [seen: dump-keychain samples]
TOOL_PARTITIONS = ("apple-tool:", "apple:")
FORMAT = 1
LOCK_WAIT_S = 60.0


class DoubleError(Exception):
    """The double's own state is unusable (not a behaviour of ``security``)."""


def partitions_for(creator: str) -> tuple[str, ...]:
    # Apple's own tools get both ids; any other client gets the one id securityd derives for it
    # (teamid:, cdhash:) [Apple securityd clientid.cpp, via the notes].
    return TOOL_PARTITIONS if creator == TOOL_PARTITION else (creator,)


@dataclass
class Record:
    service: str
    account: str
    secret: bytes
    cdat: int
    mdat: int
    partitions: list[str]
    apps: list[str] | None  # None: any application may decrypt (``-A``)
    creator: str
    label: str
    attrs: dict[str, str] = field(default_factory=dict)  # desc gena icmt crtr type, when set
    rid: int = 0  # record id: a write of new data makes a new record (delete, then insert)

    def to_json(self) -> dict[str, Any]:
        obj = asdict(self)
        obj["secret"] = self.secret.hex()
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Record:
        values = dict(obj)
        values["secret"] = bytes.fromhex(obj["secret"])
        return cls(**values)


@dataclass
class Config:
    locked: bool = False
    ui: bool = False  # False: an SSH or launchd session, where securityd can show no dialog
    delay_s: float = 0.0
    dialog_s: float = 30.0
    foreign_write: str = "deny"
    foreign_delete: str = "allow"
    keychain_password: str = "password"
    clock_offset_s: float = 0.0
    dialog_answer: str = "none"  # none (nobody clicks), deny, allow, always
    line_buffer: int = 4096  # security.c MAX_LINE_LEN

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


@dataclass
class State:
    user: str
    home: str
    config: Config
    items: list[Record]
    calls: list[list[str]]
    dialogs: list[dict[str, Any]]
    decrypts: dict[str, int]
    next_rid: int = 1

    @property
    def keychain_path(self) -> str:
        return f"{self.home}/Library/Keychains/login.keychain-db"

    def now(self) -> float:
        return time.time() + self.config.clock_offset_s

    def find(self, service: str, account: str) -> Record | None:
        return next((r for r in self.items if (r.service, r.account) == (service, account)),
                    None)

    def by_rid(self, rid: int) -> Record | None:
        return next((r for r in self.items if r.rid == rid), None)

    def insert(self, record: Record) -> None:
        """Append ``record`` as a new record: a new id, last in search order."""
        record.rid = self.next_rid
        self.next_rid += 1
        self.items.append(record)

    def count_decrypt(self, record: Record) -> None:
        key = _pair_key(record.service, record.account)
        self.decrypts[key] = self.decrypts.get(key, 0) + 1

    def decrypt_count(self, service: str, account: str) -> int:
        return self.decrypts.get(_pair_key(service, account), 0)

    def add_dialog(self, op: str, service: str, account: str) -> None:
        self.dialogs.append({"op": op, "service": service, "account": account,
                             "at": self.now()})

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "user": self.user, "home": self.home,
                "config": asdict(self.config), "items": [r.to_json() for r in self.items],
                "calls": self.calls, "dialogs": self.dialogs, "decrypts": self.decrypts,
                "next_rid": self.next_rid}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> State:
        if obj.get("format") != FORMAT:
            raise DoubleError(f"unknown state format {obj.get('format')!r}")
        return cls(obj["user"], obj["home"], Config.from_json(obj["config"]),
                   [Record.from_json(r) for r in obj["items"]], obj["calls"], obj["dialogs"],
                   obj["decrypts"], obj["next_rid"])


def _pair_key(service: str, account: str) -> str:
    return f"{service}\x00{account}"


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self._db = state_dir / "db.json"
        self._lock = state_dir / "lock"

    @classmethod
    def create(cls, state_dir: Path, user: str, home: str) -> Store:
        """Open the store in ``state_dir``, making an empty keychain there if it has none."""
        state_dir.mkdir(parents=True, exist_ok=True)
        store = cls(state_dir)
        with store._locked():
            if not store._db.exists():
                store._save(State(user, home, Config(), [], [], [], {}))
        return store

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """The state, written back when the block ends without an exception."""
        with self._locked():
            state = self._load()
            yield state
            self._save(state)

    def read(self) -> State:
        with self._locked():
            return self._load()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _flock_bounded(fd)
            yield
        finally:
            os.close(fd)  # releases the lock, as a kill does

    def _load(self) -> State:
        try:
            return State.from_json(json.loads(self._db.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DoubleError(f"cannot read {self._db}: {exc}") from exc

    def _save(self, state: State) -> None:
        tmp = self.dir / f".db.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_bytes(json.dumps(state.to_json(), separators=(",", ":")).encode())
        os.replace(tmp, self._db)


def _flock_bounded(fd: int) -> None:
    # A bounded wait (the house rule): a holder never keeps the lock across a sleep, so 60 s of
    # waiting means something is wrong, not busy.
    deadline = time.monotonic() + LOCK_WAIT_S
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            raise DoubleError("the keychain state stayed locked for 60 s")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
