"""A faithful test double of macOS ``/usr/bin/security``, so the Keychain store runs on Linux.

``SecurityDouble(root)`` keeps a login keychain in ``root/state`` (JSON, replaced atomically
under an fcntl lock: any number of processes at once, and a killed one leaves it whole) and
writes ``root/bin/security``, an executable to run by that absolute path. Each invocation acts
as Apple's tool: partition id ``apple-tool:``, trusted-application path ``/usr/bin/security``.
The Python side seeds items as other programs would have written them (``put``), sets the
session (``configure``) and reads what happened (``dialogs``, ``calls``, ``decrypts``).

Sources, per behaviour: **[Apple f]** apple-oss-distributions/Security 61901.0.87.0.1, file f;
**[seen]** real output quoted in public issues; **[inferred]** neither (reasoned, not observed).

Output formats
- Attributes: ``keychain: "<path>"``, ``version: 512``, ``class: "genp"``, ``attributes:``,
  then 16 lines in schema order, ``    0x00000007 <blob>="<label>"`` ... ``"type"<uint32>=<NULL>``;
  values through ``print_buffer``: ``"text"`` (octal escapes for bytes outside 0x20-0x7E and for
  ``\\``), ``0x<HEX> `` for binary, both (two spaces) for a mix, as a timedate
  ``0x3230...5A00  "20261202074800Z\\000"`` [Apple keychain_utilities.c; order seen].
- ``-w``: the secret and a newline; lower-case hex if any byte fails C-locale ``isprint``
  (0x20-0x7E; security never calls setlocale) [Apple keychain_find.c].
- ``-g``: the attributes on stdout, ``password: `` + print_buffer(secret) on stderr [Apple].
- Missing item: ``security: SecKeychainSearchCopyNext: The specified item could not be found in
  the keychain.``, exit 44 [Apple; seen]. A failed decrypt prints **nothing** [Apple; seen:
  fastlane-community/security #5, BootUnlock #14].
- Exit status: main's int result, OSStatus included, cut to its low byte: 44, 36, 45, 51, 128
  for -25300, -25308, -25299, -25293, -128 [Apple security.c]. Usage error: 2, with
  ``Usage: <cmd> <usage>`` and the help line on stderr; unknown command: 1 [Apple security.c].
- getopt messages name the subcommand (``find-generic-password: illegal option -- x``) [seen:
  OS X 10.7; current macOS may say ``security:``].

Access (each decrypt: ``-w``, ``-g``, ``dump-keychain -d``) [Apple securityd; see _security.access]
- Gates in order: keychain locked (asks for the password); decrypt entry does not trust
  ``/usr/bin/security`` (asks "allow?"); partition list lacks ``apple-tool:`` (asks for the
  password). Without UI (``ui=False``, SSH or launchd) the first such gate gives 36 at once
  [Apple acls.cpp, acl_keychain.cpp; seen: git-credential-manager].
- With UI each gate records a dialog and the call blocks ``dialog_s`` then exits 128 (Cancel)
  [inferred], unless ``dialog_answer`` is deny (51; Cancel on the unlock sheet: 128), allow, or
  always (adds ``/usr/bin/security`` and/or ``apple-tool:`` to the item) [Apple].
- A killed invocation leaves the state whole: dialogs are recorded before the wait, no lock is
  held across it.
- Attribute reads never prompt, and work while locked [inferred: attributes are stored in the
  clear; Keychain Access lists a locked keychain]. ``dump-keychain -a`` needs the keychain
  unlocked to read each ACL [Apple securityd kckey.cpp -> makeUnlocked].
- ``put(creator="cdhash:...", apps=(python,))``, an item python-keyring created: ``-w`` gives 36
  without UI, a dialog with. ``put(creator="cdhash:...")`` with the default apps, a CLI item
  keyring later updated: the partition gate; also 36 over SSH (securityd asks on a read).

add-generic-password [Apple keychain_add.c, Item.cpp]
- New item: partitions (``apple-tool:``, ``apple:``) [seen], apps (``/usr/bin/security``),
  label = ``-l`` or the service, cdat = mdat = now (whole seconds; ``clock_offset_s`` applies).
  ``-A``: any application; ``-T p`` (repeatable): exactly those, ``-T ""``: none [Apple].
- Existing item without ``-U``: 45 and ``SecKeychainItemCreateFromContent (<default>): The
  specified item already exists in the keychain.`` [Apple].
- ``-U`` modifies in place: data, label, mdat; cdat kept; **apps kept** (the old ACL is copied);
  partitions re-stamped to the writer; the record moves last [Apple Item.cpp]. Without ``-w``/
  ``-X`` the data and partitions stay [inferred]. ``-A``/``-T`` with ``-U`` merge applications
  (old then new; ``-A`` adds none) and ask (change-acl dialog; 36 without UI) [Apple
  access_utils.c; seen: notes, AntigravityManager #309].
- **Any failed modify falls through to a create**, which fails with 45: ``-U`` on a foreign item
  with ``foreign_write="deny"`` prints ``SecKeychainItemModifyContent: The user name or
  passphrase you entered is not correct.`` (a write's partition mismatch is refused without a
  dialog: errSecAuthFailed) then the 45 message, exit 45 [Apple keychain_add.c, acls.cpp].
  Locked: 36 (both steps ask). ``foreign_write="allow"``: updated and re-stamped [inferred].
- ``-X``: either case, odd length zero-padded at the front; bad hex: message and usage, 2.
  ``-w`` as the last word: prompts ``password data for new item: `` and ``retype ...`` on
  stderr and reads them from stdin (no tty; 128 bytes kept) [Apple; seen: antifailure #420,
  vellum-ai #190 for ``-w -U`` storing ``-U``].

Other commands
- delete-generic-password: attributes on stdout, ``password has been deleted.`` on stderr even
  when the delete failed, exit = its status; no criteria: usage; missing: 44 [Apple].
  ``foreign_delete`` ("allow" default [inferred]; "deny": 51, no dialog [Apple acls.cpp]).
- show-keychain-info: ``Keychain "<NULL>" no-timeout`` on stderr (the name as typed, if one),
  exit 0; locked: needs an unlock, so 36 without UI with ``SecKeychainCopySettings <NULL>: User
  interaction is not allowed.`` [Apple kcdatabase.cpp getParameters; seen: GCM PR #26].
- dump-keychain ``[-a] [-d] [-r] [-i] [-o file]``: every item; ``-a`` adds ``access: 5 entries``
  (encrypt, decrypt..., change_acl, integrity, partition_id) in Apple's print_access format;
  the partition entry's description is printed **decoded** (``apple-tool:, apple:``), not as
  its hex plist [Apple print_partition_id_list; seen]; which entries and their order
  [inferred]. Without ``-d`` nothing is decrypted; a failing item is reported and skipped, exit 0.
- set-generic-password-partition-list ``-S ids [-k pw]``: wrong password prints
  ``SecKeychainUnlock: The user name or passphrase you entered is not correct.`` and exits **1**
  (this command returns 1, not the OSStatus); no ``-k``: prompts ``password to unlock default:``
  and reads stdin (EOF: empty, so wrong: 1); nothing matched: 1; ``-S`` split on commas only;
  without ``-a``/``-s`` every item; attributes printed per item; unlocks the keychain [Apple].
- unlock-keychain ``-p pw``: wrong: 51 [Apple]. lock-keychain. list-/default-/login-keychain
  (display only). help, error. Anything else: ``security: <cmd>: not emulated by the test
  double``, exit 1.

``-i``: Apple's readline with a 4096-byte buffer (``line_buffer``; not 4032 as the notes say:
security.c has MAX_LINE_LEN 4096 in every release) [Apple security.c, readline.c; seen: go-keyring
#153, clauth #66]: a line of up to 4094 bytes + newline runs; 4095 bytes run whole and leave an
empty command (exit 0 even if the command failed); longer lines run cut and the rest runs as
the next command; a last line without newline is dropped. Split per Apple (quotes ``"``/``'``
opening a word, backslash escapes, 32 words). No prompt unless stdin is a tty; after a failing
command ``<cmd>: returned <status>`` on stderr (the raw OSStatus, e.g. -25300) unless ``-q``;
exit = the last command's status [Apple security.c].

Recording: ``calls()`` has argv[1:] of each invocation and each ``-i`` line split, with every
password argument (``-w -p -X`` of add, ``-k``, unlock's ``-p``) as ``<secret>``; the rest of a
cut line is recorded as ``["<cut-tail>", "<n> bytes"]``. ``decrypts`` counts every decrypt
asked for, granted or not. ``delay_s``: each command waits first. Not emulated: /dev/tty.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.sim._security.state import (
    SECURITY_TOOL,
    TOOL_PARTITION,
    DoubleError,
    Record,
    Store,
    partitions_for,
)

__all__ = ["DoubleError", "Item", "SecurityDouble"]

_REPO = Path(__file__).resolve().parents[2]
_ANSWERS = ("none", "deny", "allow", "always")
_POLICIES = ("deny", "allow")


@dataclass(frozen=True)
class Item:
    service: str
    account: str
    secret: bytes = field(repr=False)
    keychain: str  # keychain file path
    cdat: int  # unix seconds (1 s resolution, as Keychain's timedate)
    mdat: int
    partitions: tuple[str, ...]
    apps: tuple[str, ...]  # trusted applications of the decrypt entry
    creator: str  # the partition id of the program that created it
    allow_any: bool = False  # -A: any application may decrypt (apps is then empty)
    label: str = ""


class SecurityDouble:
    def __init__(self, root: Path, *, user: str = "alice", home: str = "/Users/alice") -> None:
        self.root = Path(root)
        self._store = Store.create(self.root / "state", user, home)
        state = self._store.read()
        if (state.user, state.home) != (user, home):
            raise DoubleError(f"{self.root} holds the keychain of {state.user} ({state.home})")
        self.user = user
        self.home = home
        self.keychain_path = state.keychain_path
        self.executable = self.root / "bin" / "security"
        self._write_executable()

    # -- seeding and reading ---------------------------------------------------------------
    def put(self, service: str, account: str, secret: bytes | str, *,
            creator: str = TOOL_PARTITION, apps: Sequence[str] | None = (SECURITY_TOOL,),
            mdat: int | None = None, cdat: int | None = None,
            partitions: Sequence[str] | None = None, label: str | None = None) -> None:
        """Seed an item as a given program would have written it (``apps=None``: any app).

        E.g. python-keyring's SecItemAdd: ``creator="cdhash:0123abcd",
        apps=("/opt/homebrew/bin/python3.12",)``. An existing item is replaced (cdat kept).
        """
        data = secret.encode() if isinstance(secret, str) else bytes(secret)
        with self._store.transaction() as state:
            now = int(state.now())
            old = state.find(service, account)
            record = Record(service, account, data, cdat or (old.cdat if old else now),
                            now if mdat is None else mdat,
                            list(partitions if partitions is not None else partitions_for(creator)),
                            None if apps is None else list(apps), creator,
                            service if label is None else label)
            if old is not None:
                state.items.remove(old)
            state.insert(record)

    def item(self, service: str, account: str) -> Item | None:
        state = self._store.read()
        record = state.find(service, account)
        return None if record is None else self._item(record)

    def items(self) -> list[Item]:
        return [self._item(record) for record in self._store.read().items]

    def delete(self, service: str, account: str) -> None:
        with self._store.transaction() as state:
            record = state.find(service, account)
            if record is not None:
                state.items.remove(record)

    def _item(self, record: Record) -> Item:
        return Item(record.service, record.account, record.secret, self.keychain_path,
                    record.cdat, record.mdat, tuple(record.partitions),
                    tuple(record.apps or ()), record.creator, record.apps is None, record.label)

    # -- the session -----------------------------------------------------------------------
    def configure(self, *, locked: bool | None = None, ui: bool | None = None,
                  delay_s: float | None = None, dialog_s: float | None = None,
                  foreign_write: str | None = None, foreign_delete: str | None = None,
                  keychain_password: str | None = None, clock_offset_s: float | None = None,
                  dialog_answer: str | None = None, line_buffer: int | None = None) -> None:
        """Change only what is given. ``dialog_answer``: none (nobody clicks: wait ``dialog_s``,
        then Cancel), deny, allow, always. ``line_buffer``: ``-i``'s buffer (Apple: 4096)."""
        changes = {k: v for k, v in locals().items() if k != "self" and v is not None}
        _validate(changes)
        with self._store.transaction() as state:
            for name, value in changes.items():
                setattr(state.config, name, value)

    # -- what happened ---------------------------------------------------------------------
    def dialogs(self) -> list[dict[str, object]]:
        """Every prompt the double would have shown: {"op", "service", "account", "at"}."""
        return [dict(d) for d in self._store.read().dialogs]

    def calls(self) -> list[list[str]]:
        """argv[1:] of every invocation and every ``-i`` line, secrets as ``<secret>``."""
        return [list(c) for c in self._store.read().calls]

    def decrypts(self, service: str, account: str) -> int:
        """How many times that item's secret was returned or asked for."""
        return self._store.read().decrypt_count(service, account)

    def run(self, *args: str, input: bytes | None = None, timeout: float = 30.0,
            ) -> subprocess.CompletedProcess[bytes]:
        """Run the executable (a convenience for tests and demos)."""
        return subprocess.run([str(self.executable), *args], input=input, capture_output=True,
                              timeout=timeout, check=False)

    def _write_executable(self) -> None:
        if any(c.isspace() for c in sys.executable):
            raise DoubleError(f"a shebang cannot name {sys.executable!r} (blank in the path)")
        script = (f"#!{sys.executable} -I\n"
                  "import sys\n"
                  f"sys.path.insert(0, {str(_REPO)!r})\n"
                  "from agent.sim._security.tool import run\n"
                  f"sys.exit(run(sys.argv, {str(self.root / 'state')!r}))\n")
        self.executable.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.executable.with_name(f".security.{os.getpid()}.tmp")
        tmp.write_text(script)
        tmp.chmod(0o755)
        os.replace(tmp, self.executable)


def _validate(changes: dict[str, Any]) -> None:
    for name in ("delay_s", "dialog_s"):
        if name in changes and not 0 <= changes[name] <= 600:
            raise ValueError(f"{name} must be within 0..600 s")
    for name in ("foreign_write", "foreign_delete"):
        if name in changes and changes[name] not in _POLICIES:
            raise ValueError(f"{name} must be one of {_POLICIES}")
    if changes.get("dialog_answer", "none") not in _ANSWERS:
        raise ValueError(f"dialog_answer must be one of {_ANSWERS}")
    if changes.get("line_buffer", 4096) < 2:
        raise ValueError("line_buffer must be at least 2")
