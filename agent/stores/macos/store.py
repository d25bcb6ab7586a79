"""Claude Code's own macOS Keychain item as a store, kept the way the CLI keeps it.

Rules (``../shared/notes/macos-keychain.md``, "Rules for credsync on macOS"):
- every call through ``/usr/bin/security`` by absolute path; never keyring or Security.framework
  from Python (a write from Python re-stamps the item to Python and locks the CLI out);
- poll the attributes only (no ``-w``: nothing decrypted, no prompt) and read the secret only
  when ``(keychain, mdat)`` moved, or while ``mdat`` is too recent to tell two writes apart
  (1 s resolution);
- write under the CLI's ``.storage-write.lock`` with a fresh re-read inside it, changing only
  ``claudeAiOauth`` and keeping every other key, the overflow pointer verbatim; never write
  after a locked, transient or unparsable read, never break the overflow login binding, never
  a line ``security -i`` would cut;
- verify every write by reading it back as the CLI reads, and remember ``(keychain, mdat)`` of
  what we wrote.
An item another program made is reported with its fix; credsync repairs it only when it is
provably credsync's own earlier write (same ``(keychain, mdat)``, whole document on record).
"""

from __future__ import annotations

import calendar
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.credential import (
    Credential,
    Reading,
    ReadState,
    merged_document,
    parse_document,
    reading_from_document,
)
from agent.errors import KeychainUnavailable, StoreError
from agent.fsutil import atomic_write, read_bytes
from agent.locks.mkdirlock import under_storage_lock
from agent.stores.base import Role, Store
from agent.stores.macos import overflow
from agent.stores.macos.foreign import Ownership, fix_text, ownership
from agent.stores.macos.identity import KeychainIdentity
from agent.stores.macos.security import (
    INTERACTION_NOT_ALLOWED,
    LINE_LIMIT,
    NOT_FOUND,
    Answer,
    Attributes,
    SecurityTool,
    add_line,
    decode_secret,
    parse_attributes,
)

log = logging.getLogger("credsync.keychain")

POLL_S = 5.0  # attribute polls; the CLI itself serves reads up to 30 s old
RECENT_S = 2.0  # an mdat this close to the read cannot tell a second write in the same second
LOCK_TIMEOUT_S = 3.0
QUIET_S = 900.0  # an item that showed a dialog is asked again after this, or when it changes
READ_ONLY = ("[claude] keychain = false: credsync does not write Claude Code's Keychain item, "
             "so it leaves refreshing to Claude Code")
LOCKED = "keychain: the login keychain is locked (unlock it, or log in on the Mac's desktop)"


def cli_text(doc: dict[str, Any]) -> str:
    """The document as the CLI writes it: compact ``JSON.stringify``, every UTF-16 unit
    outside 0x20-0x7E as a lower-case ``\\uXXXX`` (``json.dumps``'s ASCII escaping, plus DEL)."""
    from agent.jsondoc import dumps

    return dumps(doc, indent=None, separators=(",", ":")).decode("ascii").replace(
        "\x7f", "\\u007f")


@dataclass
class Seen:
    """What the store last read: the attributes, and the secret's reading then."""

    stamp: tuple[str | None, str | None]
    reading: Reading
    doc: dict[str, Any] | None
    settled: bool  # read long enough after mdat that a same-second write cannot hide
    # Not asked again before this time unless the item changes: asking would show a dialog
    # (an item another program owns; a locked keychain on a desktop). None: no limit.
    quiet_until: float | None = None
    foreign: Ownership | None = None

    def reusable(self, stamp: tuple[str | None, str | None], now: float) -> bool:
        if stamp != self.stamp:
            return False
        if self.quiet_until is not None:
            return now < self.quiet_until
        return self.settled


@dataclass(frozen=True)
class Snapshot:
    """One strict read: attributes, then the secret."""

    attrs: Attributes | None  # None: no item
    reading: Reading
    doc: dict[str, Any] | None
    blocker: str | None = None  # why nothing may be written (foreign, sealed, locked)
    foreign: Ownership | None = None
    prompted: bool = False  # asking again would show a dialog


class WriteRecords:
    """``(keychain, mdat)`` and the whole document of credsync's last write per item (0600),
    the one proof that lets credsync repair an item it made itself."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            raw = read_bytes(self.path, 1 << 20)
            obj = json.loads(raw) if raw else {}
        except (StoreError, ValueError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def get(self, service: str) -> dict[str, Any] | None:
        found = self.load().get(service)
        return found if isinstance(found, dict) else None

    def put(self, service: str, stamp: tuple[str | None, str | None], doc: dict[str, Any]) \
            -> None:
        if self.path is None:
            return
        obj = self.load()
        obj[service] = {"keychain": stamp[0], "mdat": stamp[1], "document": doc}
        try:
            atomic_write(self.path, json.dumps(obj).encode())
        except StoreError as exc:
            log.warning("cannot record the keychain write: %s", exc)


class MacKeychainStore(Store):
    kind = "keychain"
    role = Role.HOLDER
    poll_s: float | None = POLL_S

    def __init__(self, ident: KeychainIdentity, tool: SecurityTool, *,
                 config_dir: Path | None = None, records: WriteRecords | None = None,
                 clock: Callable[[], float] = time.time,
                 lock_timeout_s: float = LOCK_TIMEOUT_S, read_only: bool = False) -> None:
        self.ident = ident
        # `[claude] keychain = false`: the item is watched (the CLI uses it) but never written.
        self.read_only = read_only
        self.tool = tool
        self.config_dir = config_dir
        self.records = records or WriteRecords(None)
        self.clock = clock
        self.lock_timeout_s = lock_timeout_s
        self.name = f"keychain:{ident.service}"
        self.location = f"service={ident.service} account={ident.account}"
        self._seen: Seen | None = None
        self._blocker: str | None = None
        self._present = False  # the item existed at the last read

    # ----- reading -----------------------------------------------------------------------
    def changed(self) -> bool:
        """A cheap check (attributes only): has the item moved since the last read?"""
        answer = self.tool.attributes(self.ident.service, self.ident.account)
        stamp = _stamp(answer)
        seen = self._seen
        return seen is None or stamp is None or not seen.reusable(stamp, self.clock())

    def read(self) -> Reading:
        return self.read_document()[0]

    def read_document(self) -> tuple[Reading, dict[str, Any] | None]:
        answer = self.tool.attributes(self.ident.service, self.ident.account)
        self._present = answer.code != NOT_FOUND
        if answer.code == NOT_FOUND:
            self._seen, self._blocker = None, None
            return Reading(ReadState.MISSING, detail="no keychain item"), None
        if not answer.ok:
            return Reading(ReadState.ERROR, detail=f"keychain: {answer.describe()}"), None
        stamp = parse_attributes(answer.out).stamp
        seen = self._seen
        if seen is not None and seen.reusable(stamp, self.clock()):
            return seen.reading, seen.doc
        snap = self._secret(parse_attributes(answer.out))
        self._remember(snap)
        return snap.reading, snap.doc

    def _remember(self, snap: Snapshot) -> None:
        self._blocker = snap.blocker
        quiet = snap.foreign is not None or snap.prompted
        if snap.attrs is None or (snap.reading.state is ReadState.ERROR and not quiet):
            self._seen = None  # read again next time
            return
        # An item that made (or would make) a dialog is not asked again until it changes, or
        # for QUIET_S: every ask is a dialog on the desktop.
        now = self.clock()
        self._seen = Seen(snap.attrs.stamp, snap.reading, snap.doc,
                          _settled(snap.attrs.mdat, now),
                          now + QUIET_S if quiet else None, snap.foreign)

    def _secret(self, attrs: Attributes) -> Snapshot:
        # Locked: a secret read would ask for the keychain password (a dialog, or exit 36
        # without a desktop). Asked first, for nothing: show-keychain-info never prompts.
        info = self.tool.keychain_info()
        if info.code == INTERACTION_NOT_ALLOWED:  # no desktop: said at once, no dialog
            return Snapshot(attrs, Reading(ReadState.ERROR, detail=LOCKED), None, LOCKED)
        if info.timed_out:  # an unlock dialog on the desktop, killed at the deadline
            return Snapshot(attrs, Reading(ReadState.ERROR, detail=LOCKED), None, LOCKED,
                            prompted=True)
        answer = self.tool.secret(self.ident.service, self.ident.account)
        if answer.code == NOT_FOUND:  # deleted between the two calls
            return Snapshot(None, Reading(ReadState.MISSING, detail="no keychain item"), None)
        if answer.code == INTERACTION_NOT_ALLOWED or answer.timed_out:
            return self._refused(attrs, answer)
        if not answer.ok:
            detail = f"keychain: {answer.describe()}"
            return Snapshot(attrs, Reading(ReadState.ERROR, detail=detail), None, detail)
        text, was_hex = decode_secret(answer.out)
        if not text.strip():
            return Snapshot(attrs, Reading(ReadState.INVALID, detail="empty keychain item"),
                            None)
        reading, doc = parse_document(text.encode("utf-8"))
        if was_hex:
            # Not the CLI's encoding (it escapes every non-ASCII character): it reads this as
            # unparsable. The document itself is kept, so that a repair loses no key.
            detail = "written by another program in a form Claude Code cannot read"
            return Snapshot(attrs, Reading(ReadState.INVALID, detail=detail), doc)
        if doc is not None and reading.state is ReadState.LOGGED_OUT and \
                overflow.pointer(doc) is not None:
            return self._sealed(attrs, doc)
        return Snapshot(attrs, reading, doc)

    def _refused(self, attrs: Attributes, answer: Answer) -> Snapshot:
        if self.tool.keychain_info().code == INTERACTION_NOT_ALLOWED:  # locked meanwhile
            return Snapshot(attrs, Reading(ReadState.ERROR, detail=LOCKED), None, LOCKED)
        found = None
        if attrs.keychain is not None:
            dump = self.tool.dump_access(attrs.keychain)
            found = ownership(dump.out, self.ident) if dump.ok else None
        if found is not None and found.cli_can_read and not answer.timed_out:
            detail = f"keychain: {answer.describe()}"
            return Snapshot(attrs, Reading(ReadState.ERROR, detail=detail), None, detail)
        detail = fix_text(self.ident, found)
        return Snapshot(attrs, Reading(ReadState.ERROR, detail=detail), None, detail,
                        found or Ownership((), ()))

    def _sealed(self, attrs: Attributes, doc: dict[str, Any]) -> Snapshot:
        # No login in the main item but a pointer: the CLI may have sealed it in the overflow.
        ptr = overflow.pointer(doc)
        assert ptr is not None
        answer = self.tool.secret(self.ident.overflow_service(str(ptr["slot"])),
                                  self.ident.account)
        sections = overflow.open_overflow(ptr, answer.out) if answer.ok else None
        oauth = overflow.sealed_login(doc, sections)
        if oauth is None:
            return Snapshot(attrs, reading_from_document(doc), doc)
        reading = reading_from_document({overflow.OAUTH_KEY: oauth})
        why = ("its login is sealed in the CLI's overflow item, which credsync never writes: "
               "Claude Code refreshes this login itself")
        return Snapshot(attrs, Reading(reading.state, reading.credential,
                                       reading.detail or "sealed in the overflow item"),
                        doc, why)

    def strict_read(self) -> Snapshot:
        answer = self.tool.attributes(self.ident.service, self.ident.account)
        if answer.code == NOT_FOUND:
            return Snapshot(None, Reading(ReadState.MISSING, detail="no keychain item"), None)
        if not answer.ok:
            detail = f"keychain: {answer.describe()}"
            return Snapshot(None, Reading(ReadState.ERROR, detail=detail), None, detail)
        return self._secret(parse_attributes(answer.out))

    def write_blocker(self) -> str | None:
        """Why credsync may not write this item now (then it must not refresh either: the CLI
        would go on with the old login), from the last read; None when it may."""
        if self.read_only and self._present:
            return READ_ONLY
        return self._blocker

    # ----- writing -----------------------------------------------------------------------
    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        if cred.is_blank:
            raise StoreError("refusing to write a blank credential")
        if self.read_only:
            return False  # told to leave the Keychain alone
        return under_storage_lock(self.ident.storage_dir, self.lock_timeout_s, self.name,
                                  lambda: self._write_locked(cred, supersedes))

    def _write_locked(self, cred: Credential, supersedes: Credential | None) -> bool:
        quiet = self._quiet()
        if quiet is not None:
            # Asking for the secret again would show the same dialog: decided on what we know.
            if quiet.foreign is not None:
                return self._repair(Snapshot(Attributes(*quiet.stamp), quiet.reading, None,
                                             self._blocker, quiet.foreign), cred)
            raise KeychainUnavailable(quiet.reading.detail)
        snap = self.strict_read()
        self._remember(snap)
        if snap.foreign is not None:
            return self._repair(snap, cred)
        if snap.reading.state is ReadState.ERROR:
            raise KeychainUnavailable(snap.reading.detail)
        if snap.blocker is not None:
            raise StoreError(f"{self.name}: {snap.blocker}")
        current = snap.reading.valid
        if current is not None and (current.same_tokens(cred)
                                    or current.newer_than(cred, supersedes)):
            return False
        # Garbage has no document and is replaced whole; a document with a damaged login (or
        # one another program wrote as hex) keeps every other key.
        doc = snap.doc
        new = merged_document(doc, cred)
        if overflow.breaks_binding(doc, new):
            raise StoreError(f"{self.name}: a new login would detach the sections Claude Code "
                             "sealed in its overflow item; left to Claude Code")
        self._put(new, snap.attrs)
        return True

    def _quiet(self) -> Seen | None:
        seen = self._seen
        if seen is None or seen.quiet_until is None:
            return None
        stamp = _stamp(self.tool.attributes(self.ident.service, self.ident.account))
        return seen if stamp is not None and seen.reusable(stamp, self.clock()) else None

    def _put(self, doc: dict[str, Any], before: Attributes | None) -> None:
        text = cli_text(doc)
        line = add_line(self.ident.account, self.ident.service, text.encode("ascii").hex())
        if len(line) > LINE_LIMIT:
            raise StoreError(f"{self.name}: the document ({len(text)} bytes) is too long for "
                             "one security -i line; Claude Code moves sections into its "
                             "overflow item at its next write, credsync does not")
        answer = self.tool.add(line)
        after = self.strict_read()
        self._remember(after)
        if after.attrs is not None and after.doc is not None and \
                cli_text(after.doc) == text and \
                (before is None or after.attrs.keychain == before.keychain):
            self.records.put(self.ident.service, after.attrs.stamp, doc)
            return
        raise StoreError(f"{self.name}: the write was not read back ({answer.describe()}); "
                         "what the item holds is read again next round")

    def _repair(self, snap: Snapshot, cred: Credential) -> bool:
        record = self.records.get(self.ident.service)
        mine = record is not None and snap.attrs is not None and \
            (record.get("keychain"), record.get("mdat")) == snap.attrs.stamp and \
            isinstance(record.get("document"), dict)
        if not mine:
            raise StoreError(f"{self.name}: {snap.blocker}")
        assert record is not None
        log.warning("%s: re-creating the item credsync itself wrote, which Claude Code cannot "
                    "read", self.name)
        gone = self.tool.delete(self.ident.service, self.ident.account)
        if not gone.ok:
            raise StoreError(f"{self.name}: {snap.blocker} (delete: {gone.describe()})")
        self._put(merged_document(record["document"], cred), None)
        return True


def _stamp(answer: Answer) -> tuple[str | None, str | None] | None:
    if answer.code == NOT_FOUND or not answer.ok:
        return None
    return parse_attributes(answer.out).stamp


def _settled(mdat: str | None, now: float) -> bool:
    if mdat is None:
        return False
    try:
        changed = calendar.timegm(time.strptime(mdat, "%Y%m%d%H%M%S"))
    except ValueError:
        return False
    return now - changed >= RECENT_S


def claude_keychain_stores(
    config_dirs: list[Path], tool: SecurityTool, *, home: Path, env: dict[str, str],
    securestorage_dir: str | None, records: WriteRecords, read_only: bool = False,
) -> list[MacKeychainStore]:
    """One store per distinct item of these config dirs (with CLAUDE_SECURESTORAGE_CONFIG_DIR
    set they all share one). A dir whose item the CLI could not use is left out, logged."""
    from agent.stores.macos.identity import IdentityError, identity, session_env

    stores: list[MacKeychainStore] = []
    for config_dir in config_dirs:
        try:
            ident = identity(session_env(config_dir, home, securestorage_dir, env), home)
        except IdentityError as exc:
            log.warning("no keychain item for %s: %s", config_dir, exc)
            continue
        if all(s.ident.service != ident.service for s in stores):
            stores.append(MacKeychainStore(ident, tool, config_dir=config_dir, records=records,
                                           read_only=read_only))
    return stores
