"""What credsync keeps in its state dir (0700; every file 0600, written atomically).

- ``last-good.json``: the last known good credential document (the guardian's copy).
- ``agent.json``: the running agent's view, for ``credsync status`` (single writer: the agent).
- ``refresh.json``: the lifetime of the last refresh and the auth state (written under the refresh
  lock by whichever credsync process refreshed).
- ``journal``: sha256 of every refresh token credsync ever sent (never send one twice).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from agent.credential import Credential, parse_document
from agent.errors import StoreError
from agent.fsutil import PRIVATE_FILE, atomic_write, ensure_private_dir, read_bytes

MAX_STATE_BYTES = 4_000_000
LAST_GOOD_FILE = "last-good.json"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        ensure_private_dir(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    def load_json(self, name: str) -> dict[str, Any]:
        try:
            raw = read_bytes(self.file(name), MAX_STATE_BYTES)
            obj = json.loads(raw) if raw else {}
        except (StoreError, ValueError, RecursionError):  # nested too deeply for json
            return {}  # a damaged state file is rebuilt; it never holds the only copy of a login
        return obj if isinstance(obj, dict) else {}

    def save_json(self, name: str, obj: dict[str, Any]) -> None:
        self.ensure()
        atomic_write(self.file(name), json.dumps(obj, indent=1, sort_keys=True).encode())

    def load_last_good(self) -> Credential | None:
        try:
            raw = read_bytes(self.file(LAST_GOOD_FILE), MAX_STATE_BYTES)
        except StoreError:
            return None
        return parse_document(raw)[0].valid if raw else None

    def save_last_good(self, cred: Credential) -> None:
        self.ensure()
        doc = {"claudeAiOauth": cred.to_json_obj()}
        atomic_write(self.file(LAST_GOOD_FILE), json.dumps(doc).encode())


class Journal:
    """Hashes of refresh tokens already sent: a token in here is never sent again.

    Lines are ``+<hash>`` (about to be sent) and ``-<hash>`` (the server answered without
    spending it: a 5xx, a 429, or the connection never opened); the last line for a hash wins.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __contains__(self, refresh_token: object) -> bool:
        if not isinstance(refresh_token, str):
            return False
        wanted, spent = token_hash(refresh_token), False
        try:
            # A damaged line (bad bytes) matches no hash; it must not stop every refresh.
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line[1:].strip() == wanted:
                        spent = line.startswith("+")
        except FileNotFoundError:
            return False
        return spent

    def spent(self) -> set[str]:
        """Hashes of every refresh token sent and not answered as unspent."""
        last: dict[str, bool] = {}
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    last[line[1:].strip()] = line.startswith("+")
        except OSError:
            return set()  # unreadable: ranking falls back to expiry; sending still checks
        return {h for h, sent in last.items() if sent}

    def _append(self, line: str) -> None:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def record(self, refresh_token: str) -> None:
        """Append and fsync before the token is sent: a crash after sending must not forget it."""
        self._append("+" + token_hash(refresh_token))

    def release(self, refresh_token: str) -> None:
        self._append("-" + token_hash(refresh_token))

    def compact(self, keep: int = 1000) -> None:
        with contextlib.suppress(OSError):
            lines = self.path.read_text().splitlines()
            if len(lines) > keep:
                atomic_write(self.path, ("\n".join(lines[-keep:]) + "\n").encode())
