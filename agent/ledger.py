"""The ledger: everything credsync knows, in one object that owns the state dir.

Layout (every dir 0700, every file 0600, written atomically)::

    <state dir>/
      journal             shared by every login: refresh-token hashes sent (+), answered as
                          unspent (-) and refused by the server (!), each with its time
      refresh.lock        shared: one credsync process redeems at a time, whatever the login
      logins/<scope>/     one per set of config dirs that share a login (``scope_key``)
        scope.json        which config dirs this is (for people and ``doctor``)
        last-good.json    the guardian's copy of the login
        login.json        written by whichever credsync process refreshed, under the lock:
                          lifetime, last refresh, the refresh state, the jitter salt
        memory.json       what credsync remembers of each store (held a login, logged out
                          since, restored with); written when it changes
        agent.json        written by the running agent only: its last round, for status
        alerts.json       the notice policy's state
        agent.lock/.pid   one agent per scope

Two logins never share state: a shell with ``CLAUDE_CONFIG_DIR=~/work`` has its own scope, so it
never sees (or redeems, or writes) the ``~/.claude`` login. Token hashes are global truths (a
spent token is spent whatever login it belonged to), so the journal is shared, which also keeps
a changed list of config dirs from forgetting what was sent. The journal is bounded by age.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from agent.credential import Credential, parse_document
from agent.errors import StoreError
from agent.fsutil import append_line, atomic_write, ensure_private_dir, read_bytes

MAX_STATE_BYTES = 4_000_000
LAST_GOOD_FILE = "last-good.json"
LOGIN_FILE = "login.json"
AGENT_FILE = "agent.json"
MEMORY_FILE = "memory.json"
ALERTS_FILE = "alerts.json"
SCOPE_FILE = "scope.json"
JOURNAL_FILE = "journal"
REFRESH_LOCK_FILE = "refresh.lock"
# A refresh token lives for weeks at most; a hash older than this can no longer matter.
JOURNAL_MAX_AGE_S = 180 * 86400.0
JOURNAL_MAX_ENTRIES = 20_000  # about 1 MB; newest kept
JOURNAL_COMPACT_BYTES = 256_000
MEMORY_KEEP = 8  # fingerprints a store remembers being restored with


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode(errors="surrogatepass")).hexdigest()


def scope_key(config_dirs: Iterable[Path | str]) -> str:
    """A short stable name for a set of config dirs (order and spelling do not matter)."""
    names = sorted({os.path.normpath(os.path.abspath(os.path.expanduser(str(d))))
                    for d in config_dirs})
    return hashlib.sha256(json.dumps(names).encode()).hexdigest()[:12]


def scope_dir(root: Path) -> Path:
    """The one scope's dir under ``root`` (tools and tests that run one agent), else root."""
    try:
        found = sorted(p for p in (root / "logins").iterdir() if p.is_dir())
    except OSError:
        return root
    return found[0] if len(found) == 1 else root


# ----- the journal ---------------------------------------------------------------------------

SENT, RELEASED, REJECTED = "+", "-", "!"


@dataclass
class JournalView:
    """What the journal says, read once: hash -> (last mark, time of that mark)."""

    entries: dict[str, tuple[str, float]] = field(default_factory=dict)
    rejected_at: dict[str, float] = field(default_factory=dict)

    @property
    def spent(self) -> set[str]:
        return {h for h, (mark, _) in self.entries.items() if mark == SENT}

    @property
    def rejected(self) -> set[str]:
        return set(self.rejected_at)


class Journal:
    """Append-only, fsynced before a token is sent; any credsync process may append.

    Lines: ``<mark><sha256> <unix time>``; marks ``+`` sent, ``-`` answered without being spent
    (5xx, 429, never connected), ``!`` refused by the server (or inferred: a store cleared again
    after being restored with it). For ``+``/``-`` the last line of a hash wins; ``!`` is final.
    Lines without a time (older releases) count as written at the file's modification time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> JournalView:
        view = JournalView()
        try:
            raw = read_bytes(self.path, MAX_STATE_BYTES * 4)
        except StoreError:
            return view  # unreadable: ranking falls back to expiry; sending still checks
        if not raw:
            return view
        fallback = self._mtime()
        for line in raw.decode(errors="replace").splitlines():
            parsed = _journal_line(line, fallback)
            if parsed is None:
                continue  # a damaged line matches no hash; it must not stop every refresh
            mark, digest, at = parsed
            if mark == REJECTED:
                view.rejected_at[digest] = at
            else:
                view.entries[digest] = (mark, at)
        return view

    def _mtime(self) -> float:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return time.time()

    def was_sent(self, refresh_token: str) -> bool:
        """Is this token spent? Checked again right before sending, from the file itself."""
        digest = token_hash(refresh_token)
        view = self.read()
        return digest in view.spent or digest in view.rejected

    def _append(self, mark: str, digest: str, now: float) -> None:
        append_line(self.path, f"{mark}{digest} {now:.3f}")

    def record(self, refresh_token: str, now: float) -> None:
        """Append and fsync before the token is sent: a crash after sending must not forget it."""
        self._append(SENT, token_hash(refresh_token), now)

    def release(self, refresh_token: str, now: float) -> None:
        self._append(RELEASED, token_hash(refresh_token), now)

    def reject(self, digest: str, now: float) -> None:
        self._append(REJECTED, digest, now)

    def needs_compaction(self) -> bool:
        try:
            return os.stat(self.path).st_size > JOURNAL_COMPACT_BYTES
        except OSError:
            return False

    def compact(self, now: float, max_age_s: float = JOURNAL_MAX_AGE_S,
                max_entries: int = JOURNAL_MAX_ENTRIES) -> int:
        """Drop what is older than ``max_age_s`` and all but the newest ``max_entries``; return
        how many hashes are kept. Call it under the refresh lock: an append made by another
        process between the read and the rename would be lost otherwise."""
        view = self.read()
        rows = [(at, REJECTED, h) for h, at in view.rejected_at.items()]
        rows += [(at, mark, h) for h, (mark, at) in view.entries.items()]
        rows = sorted(r for r in rows if now - r[0] <= max_age_s)[-max_entries:]
        text = "".join(f"{mark}{h} {at:.3f}\n" for at, mark, h in rows)
        atomic_write(self.path, text.encode())
        return len(rows)


def _journal_line(line: str, fallback: float) -> tuple[str, str, float] | None:
    line = line.strip()
    if len(line) < 65 or line[0] not in (SENT, RELEASED, REJECTED):
        return None
    digest, _, rest = line[1:].partition(" ")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None
    try:
        at = float(rest) if rest else fallback
    except ValueError:
        at = fallback
    return line[0], digest, at


# ----- what the agent remembers of each store -------------------------------------------------

@dataclass
class StoreMemory:
    """What credsync remembers of one store across rounds and restarts."""

    seen_valid: bool = False
    logged_out_since: float | None = None
    restored_with: list[str] = field(default_factory=list)  # fingerprints restored once

    def to_json(self) -> dict[str, object]:
        return {"seen_valid": self.seen_valid, "logged_out_since": self.logged_out_since,
                "restored_with": self.restored_with[-MEMORY_KEEP:]}

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> StoreMemory:
        since = obj.get("logged_out_since")
        restored = obj.get("restored_with")
        return cls(seen_valid=bool(obj.get("seen_valid")),
                   logged_out_since=float(since) if _number(since) else None,
                   restored_with=[str(x) for x in restored] if isinstance(restored, list) else [])


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----- the login record (login.json) ---------------------------------------------------------

class LoginRecord:
    """Lifetime of the last refresh, when it was, the refresh state and the jitter salt.

    Written under the refresh lock by whichever credsync process refreshed. Whether a re-login
    is required is not stored here: it follows from the journal's refused hashes (the winner
    rule), so that every command reaches the same answer."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.data = ledger.load_json(LOGIN_FILE)

    def reload(self) -> None:
        self.data = self.ledger.load_json(LOGIN_FILE)

    def save(self) -> None:
        self.ledger.save_json(LOGIN_FILE, self.data)

    @property
    def salt(self) -> str:
        value = self.data.get("salt")
        return value if isinstance(value, str) else ""

    def ensure_salt(self) -> str:
        """The install's jitter salt, drawn and saved on first use (never by ``status``)."""
        if not self.salt:
            self.data["salt"] = secrets.token_hex(8)
            self.save()
        return self.salt

    @property
    def lifetime_s(self) -> float | None:
        value = self.data.get("lifetime_s")
        return float(value) if _number(value) and float(value) > 0 else None

    @property
    def refreshed_at(self) -> float | None:
        value = self.data.get("refreshed_at")
        return float(value) if _number(value) else None

    @property
    def problem(self) -> dict[str, object]:
        """The last refresh attempt that did not succeed (offline, retrying, busy), if any."""
        value = self.data.get("problem")
        return value if isinstance(value, dict) else {}

    def set_problem(self, state: str, now: float, reason: str, fingerprint: str) -> None:
        if self.problem.get("state") != state or self.problem.get("fingerprint") != fingerprint:
            self.data["problem"] = {"state": state, "since": now, "reason": reason,
                                    "fingerprint": fingerprint}

    def record_refresh(self, cred: Credential, expires_in: float, now: float) -> None:
        self.data.update(lifetime_s=expires_in, refreshed_at=now, fingerprint=cred.fingerprint)
        self.data.pop("problem", None)


# ----- the ledger ----------------------------------------------------------------------------

class Ledger:
    def __init__(self, root: Path, config_dirs: Sequence[Path | str] = (),
                 provider: str = "") -> None:
        self.root = root
        self.config_dirs = [str(d) for d in config_dirs]
        # Another provider's logins (Codex: its homes) get scopes of their own, never one of
        # Claude Code's, whatever the dirs (an empty list too).
        key = scope_key(config_dirs) if config_dirs else ""
        self.scope = f"{provider}-{key}" if provider else key
        self.provider = provider
        self.path = root / "logins" / self.scope if self.scope else root
        self.journal = Journal(root / JOURNAL_FILE)
        self._memory_on_disk: dict[str, Any] | None = None

    # files
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def refresh_lock_path(self) -> Path:
        # One per provider: a Codex refresh never waits for a Claude one.
        name = f"{self.provider}-{REFRESH_LOCK_FILE}" if self.provider else REFRESH_LOCK_FILE
        return self.root / name

    def ensure(self) -> None:
        ensure_private_dir(self.root)
        if self.scope and not self.file(SCOPE_FILE).exists():
            ensure_private_dir(self.path)
            self._migrate_legacy()
            self.save_json(SCOPE_FILE, {"config_dirs": self.config_dirs})
        ensure_private_dir(self.path)

    def _migrate_legacy(self) -> None:
        """Releases before scopes kept one agent.json and refresh.json for every login. What
        they remember of stores (a logout above all) and the refused hashes carry over; their
        last-good copy does not: it may be another scope's login."""
        legacy = Ledger(self.root)
        stores = legacy.load_json(AGENT_FILE).get("stores")
        if isinstance(stores, dict) and stores:
            self.save_json(MEMORY_FILE, {"stores": stores})
        old = legacy.load_json("refresh.json")
        now = time.time()
        for digest in old.get("rejected", []) if isinstance(old.get("rejected"), list) else []:
            if isinstance(digest, str) and len(digest) == 64:
                with contextlib.suppress(StoreError):
                    self.journal.reject(digest, now)
        if isinstance(old.get("salt"), str):
            self.save_json(LOGIN_FILE, {"salt": old["salt"]})

    def load_json(self, name: str) -> dict[str, Any]:
        try:
            raw = read_bytes(self.file(name), MAX_STATE_BYTES)
            obj = json.loads(raw) if raw else {}
        except (StoreError, ValueError, RecursionError):  # nested too deeply for json
            return {}  # a damaged state file is rebuilt; it never holds the only copy of a login
        return obj if isinstance(obj, dict) else {}

    def save_json(self, name: str, obj: Mapping[str, Any]) -> None:
        ensure_private_dir(self.path)
        data = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode()
        atomic_write(self.file(name), data)

    # the guardian's copy
    def load_last_good(self) -> Credential | None:
        try:
            raw = read_bytes(self.file(LAST_GOOD_FILE), MAX_STATE_BYTES)
        except StoreError:
            return None
        return parse_document(raw)[0].valid if raw else None

    def save_last_good(self, cred: Credential) -> None:
        ensure_private_dir(self.path)
        doc = {"claudeAiOauth": cred.to_json_obj()}
        atomic_write(self.file(LAST_GOOD_FILE), json.dumps(doc).encode())

    # what the agent remembers: written only when it changes, so that ``credsync token``'s
    # note (which checks every input of its answer) is not voided by every round
    def load_memory(self) -> dict[str, StoreMemory]:
        stores = self.load_json(MEMORY_FILE).get("stores")
        if not isinstance(stores, dict):
            stores = self.load_json(AGENT_FILE).get("stores")  # before memory.json existed
        if not isinstance(stores, dict):
            return {}
        loaded = {str(k): StoreMemory.from_json(v) for k, v in stores.items()
                  if isinstance(v, dict)}
        self._memory_on_disk = {"stores": {k: v.to_json() for k, v in sorted(loaded.items())}}
        return loaded

    def save_memory(self, memory: Mapping[str, StoreMemory]) -> None:
        """Write it when it differs from what this ledger last read or wrote (every round
        calls this: no read of the file on the way)."""
        obj = {"stores": {k: v.to_json() for k, v in sorted(memory.items())}}
        if obj != self._memory_on_disk:
            self.save_json(MEMORY_FILE, obj)
            self._memory_on_disk = obj

    def load_agent(self) -> dict[str, Any]:
        return self.load_json(AGENT_FILE)

    def save_agent(self, obj: Mapping[str, Any]) -> None:
        self.save_json(AGENT_FILE, obj)

    def login(self) -> LoginRecord:
        return LoginRecord(self)
