"""Claude Code's side of its Windows Credential Manager items, for tests: the CLI's own read,
write and log-out (2.1.332, ``windows-credman-with-plaintext-fallback``), re-expressed from the
build independently of ``agent.stores.windows.chunks`` so that each checks the other.

It goes through a ``CredentialVault`` as Bun.secrets would (TargetName ``service/name``, the
value as UTF-8, an empty blob or a missing item as null), and answers "would a real session
still see its login?".
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.stores.windows.credman import CredentialVault, VaultError
from agent.stores.windows.identity import CredmanIdentity

PIECE = 2400
MOST = 256


class Inconsistent(Exception):
    pass


@dataclass(frozen=True)
class CliRead:
    said: str  # "item", "file", "failed" (the CLI skips writes), "nothing"
    data: dict[str, Any] | None = None

    @property
    def login(self) -> dict[str, Any] | None:
        oauth = self.data.get("claudeAiOauth") if self.data else None
        return oauth if isinstance(oauth, dict) and oauth.get("accessToken") else None


class ClaudeCredman:
    """One CLI process with credman on for ``ident``."""

    def __init__(self, vault: CredentialVault, ident: CredmanIdentity) -> None:
        self.vault, self.ident = vault, ident

    @property
    def file(self) -> Path:
        return self.ident.storage_dir / ".credentials.json"

    def _name(self, which: int | str) -> tuple[str, str]:
        name = f"{self.ident.account}#{which}"
        return f"{self.ident.service}/{name}", name

    def _get(self, target: str) -> str | None:
        blob = self.vault.read(target)
        if not blob:
            return None
        try:
            return blob.decode("utf-8")
        except UnicodeDecodeError:
            return ""

    def _set(self, which: tuple[str, str], value: str) -> None:
        self.vault.write(which[0], which[1], value.encode("utf-8"))

    def _meta(self) -> tuple[int, int] | None:
        raw = self._get(self._name("m")[0])
        if not raw:
            return None
        try:
            obj = json.loads(raw)
        except ValueError:
            return None
        n, length = (obj.get("n"), obj.get("l")) if isinstance(obj, dict) else (None, None)
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
                 for v in (n, length))
        if not ok or not (0 < n <= MOST and 0 < length <= n * PIECE):  # type: ignore[operator]
            return None
        return int(n), int(length)  # type: ignore[arg-type]

    def raw_text(self) -> str | None:
        """The item's text (the CLI's chunked read); Inconsistent when pieces do not add up."""
        meta = self._meta()
        if meta is None:
            return self._get(self.ident.target)
        parts = [self._get(self._name(i)[0]) for i in range(meta[0])]
        joined = "".join(p or "" for p in parts)
        if len(joined) != meta[1] or None in parts:
            raise Inconsistent(f"got {len(joined)}B of {meta[1]}B")
        return base64.b64decode(joined).decode("utf-8", "replace")

    def _item(self) -> CliRead:
        try:
            text = self.raw_text()
        except (Inconsistent, VaultError):
            return CliRead("failed")
        if not text:
            return CliRead("nothing")
        try:
            data = json.loads(text)
        except ValueError:
            return CliRead("nothing")  # unparsable: the wrapper goes on to the file
        return CliRead("item", data) if isinstance(data, dict) else CliRead("nothing")

    def read(self) -> CliRead:
        """The strict read of the wrapper: the item, else the file, else nothing."""
        first = self._item()
        if first.said in ("item", "failed"):
            return first
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return CliRead("nothing")
        return CliRead("file", data) if isinstance(data, dict) else CliRead("nothing")

    def login(self) -> dict[str, Any] | None:
        return self.read().login

    # ----- writing ---------------------------------------------------------------------------
    def store_text(self, text: str) -> None:
        """The CLI's write of one document's text over the items (its order, its deletions)."""
        old = self._meta()
        old_n = old[0] if old else 0
        size = len(text.encode("utf-8"))
        if size <= PIECE:
            self._set((self.ident.target, self.ident.account), text)
            if old:
                self._set(self._name("p"), str(old_n))
                self.vault.delete(self._name("m")[0])
                for i in range(old_n):
                    self._ignore(self._name(i)[0])
                self._ignore(self._name("p")[0])
            return
        encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
        count = math.ceil(len(encoded) / PIECE)
        if count > MOST:
            raise ValueError("too large for Credential Manager")
        self._set(self._name("p"), str(max(old_n, count)))
        for i in range(count):
            self._set(self._name(i), encoded[i * PIECE:(i + 1) * PIECE])
        self._set(self._name("m"), json.dumps({"n": count, "l": len(encoded)},
                                              separators=(",", ":")))
        self._ignore(self.ident.target)
        for i in range(count, old_n):
            self._ignore(self._name(i)[0])
        self._ignore(self._name("p")[0])

    def _ignore(self, target: str) -> None:
        with contextlib.suppress(VaultError):  # the CLI lets these fail
            self.vault.delete(target)

    def write(self, doc: dict[str, Any]) -> bool:
        """The wrapper's update: the item (read back and compared), deleting the file when
        the item did not exist before; on a refusal the file, then the item is deleted."""
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        before = self._item()
        try:
            self.store_text(text)
            ok = self.raw_text() == text
        except (VaultError, ValueError, Inconsistent):
            ok = False
        if ok:
            if before.said == "nothing":
                self.file.unlink(missing_ok=True)
            return True
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.file.write_text(text, encoding="utf-8")
        self.logout_items()
        return False

    def logout_items(self) -> None:
        """The CLI's removal: the item, every piece it knows of and any it can find."""
        meta = self._meta()
        self._ignore(self.ident.target)
        known = meta[0] if meta else 0
        for i in range(known):
            self._ignore(self._name(i)[0])
        pending = self._get(self._name("p")[0])
        try:
            upto = max(known, min(max(int(pending or 0), 0), MOST))
        except ValueError:
            upto = known
        while upto < MOST and self._get(self._name(upto)[0]) is not None:
            upto += 1
        for target in (self._name("m")[0], self._name("p")[0],
                       *(self._name(i)[0] for i in range(known, upto))):
            self._ignore(target)
