"""``/usr/bin/security``, run by absolute path: the only module that spawns it.

Facts (Apple's Security sources and the CLI's 2.1.332 build, ``../shared/notes/macos-keychain.md``):
- Exit status is the low byte of the OSStatus: 44 errSecItemNotFound, 36
  errSecInteractionNotAllowed (locked, or an item whose access list does not trust the caller
  when no dialog can be shown), 45 errSecDuplicateItem, 51 errSecAuthFailed.
- ``find-generic-password`` without ``-w`` prints attributes only: nothing is decrypted and
  nothing prompts. The CLI reads ``keychain: "<path>"`` and the 14 digits of ``mdat`` from it.
- ``-w`` prints the secret, as hex when a byte is not printable.
- ``security -i`` reads one command per line into a 4032-character buffer: a longer line is cut
  and its rest runs as a command of its own. The CLI writes its item with one
  ``add-generic-password -U -a "<acct>" -s "<svc>" -X "<hex>"`` line on stdin (no ``-A``, ``-T``,
  ``-l`` or keychain path: the access list is never edited), so that the secret is not in
  ``ps``.

Every call has a deadline (the CLI's: 2 s); a call that runs over is killed and answers
``timed_out``. Nothing here raises for what ``security`` says: the answers are values.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SECURITY = Path("/usr/bin/security")
TIMEOUT_S = 2.0  # the CLI's own deadline for a keychain read or write
LINE_LIMIT = 4032  # security -i's line buffer, the newline included
NOT_FOUND = 44
INTERACTION_NOT_ALLOWED = 36
_KEYCHAIN = re.compile(r'^keychain: "(/[^"\\\n]+)"(?:\n|$)')
_MDAT = re.compile(r'^ +"mdat"<timedate>=\S+ +"(\d{14})Z', re.M)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


@dataclass(frozen=True)
class Answer:
    code: int | None  # None: killed at the deadline, or could not be started
    out: str = ""
    err: str = ""
    timed_out: bool = False
    spawn_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        if self.timed_out:
            return "no answer in time"
        if self.spawn_error is not None:
            return f"cannot run security: {self.spawn_error}"
        text = self.err.strip().splitlines()[-1][:160] if self.err.strip() else ""
        return f"security exited {self.code}" + (f" ({text})" if text else "")


@dataclass(frozen=True)
class Attributes:
    """What an attribute read tells: where the item lives and when it last changed."""

    keychain: str | None
    mdat: str | None  # "YYYYMMDDhhmmss", UTC, 1 s resolution

    @property
    def stamp(self) -> tuple[str | None, str | None]:
        return self.keychain, self.mdat


def parse_attributes(out: str) -> Attributes:
    keychain = _KEYCHAIN.match(out)
    mdat = _MDAT.search(out)
    return Attributes(keychain.group(1) if keychain else None, mdat.group(1) if mdat else None)


def decode_secret(out: str) -> tuple[str, bool]:
    """The secret ``-w`` printed, and whether it came as hex (some byte was not printable).
    Text that merely looks like hex stays text: a JSON document never does."""
    text = out.removesuffix("\n")
    if text and _HEX.fullmatch(text) and not text.lstrip().startswith(("{", "[")):
        try:
            return bytes.fromhex(text).decode("utf-8"), True
        except UnicodeDecodeError:
            return text, True
    return text, False


def add_line(account: str, service: str, hex_secret: str) -> str:
    """The CLI's stdin line for ``security -i``: names in double quotes, the secret as hex."""
    return f'add-generic-password -U -a "{account}" -s "{service}" -X "{hex_secret}"\n'


class SecurityTool:
    """Runs ``security`` by its absolute path with a deadline."""

    def __init__(self, path: Path = SECURITY, timeout_s: float = TIMEOUT_S,
                 env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.env = dict(os.environ if env is None else env)
        self.calls = 0

    def run(self, args: Sequence[str], stdin: bytes | None = None,
            timeout_s: float | None = None) -> Answer:
        self.calls += 1
        try:
            done = subprocess.run(  # an absolute path and argv: no shell
                [str(self.path), *args], input=stdin if stdin is not None else b"",
                capture_output=True, timeout=self.timeout_s if timeout_s is None else timeout_s,
                env=self.env, check=False)
        except subprocess.TimeoutExpired:
            return Answer(None, timed_out=True)  # run() has killed it already
        except OSError as exc:
            return Answer(None, spawn_error=exc.strerror or type(exc).__name__)
        return Answer(done.returncode, done.stdout.decode("utf-8", "replace"),
                      done.stderr.decode("utf-8", "replace"))

    # ----- the calls credsync makes -------------------------------------------------------
    def attributes(self, service: str, account: str) -> Answer:
        return self.run(["find-generic-password", "-a", account, "-s", service])

    def secret(self, service: str, account: str) -> Answer:
        return self.run(["find-generic-password", "-a", account, "-w", "-s", service])

    def add(self, line: str) -> Answer:
        return self.run(["-i"], stdin=line.encode("ascii"))

    def delete(self, service: str, account: str) -> Answer:
        return self.run(["delete-generic-password", "-a", account, "-s", service])

    def keychain_info(self) -> Answer:
        return self.run(["show-keychain-info"])

    def dump_access(self, keychain: str) -> Answer:
        return self.run(["dump-keychain", "-a", keychain], timeout_s=max(self.timeout_s, 10.0))
