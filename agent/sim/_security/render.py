"""Apple's text formats for items, as ``keychain_utilities.c`` prints them.

All functions return bytes: ``print_buffer`` output is ASCII, but descriptions and application
paths are printed raw (``print_cfstring``), as UTF-8.
"""

from __future__ import annotations

import hashlib
import time

from agent.sim._security.console import raw
from agent.sim._security.state import SECURITY_TOOL, Record

# The generic-password schema, in the order SecKeychainAttributeInfoForItemID gives it
# [seen: find-generic-password output]. 7 and 8 are PrintName and Alias, printed as numbers.
_SCHEMA: tuple[tuple[str, str], ...] = (
    ("\x00\x00\x00\x07", "blob"), ("\x00\x00\x00\x08", "blob"), ("acct", "blob"),
    ("cdat", "timedate"), ("crtr", "uint32"), ("cusi", "sint32"), ("desc", "blob"),
    ("gena", "blob"), ("icmt", "blob"), ("invi", "sint32"), ("mdat", "timedate"),
    ("nega", "sint32"), ("prot", "blob"), ("scrp", "sint32"), ("svce", "blob"),
    ("type", "uint32"),
)
_DECRYPT_RIGHTS = "decrypt derive export_clear export_wrapped mac sign"  # [seen: dump-keychain]


def _printable(ch: int) -> bool:
    return 0x20 <= ch <= 0x7E and ch != 0x5C  # a backslash is escaped too


def print_buffer(data: bytes) -> bytes:
    """``0x<HEX>`` when any byte is not printable, then ``"text"`` with octal escapes, when any is.

    Both, separated by two spaces, for a mix (a timedate's trailing NUL); one space after hex
    alone. Nothing at all for an empty buffer [Apple keychain_utilities.c print_buffer].
    """
    has_hex = any(not _printable(ch) for ch in data)
    has_ascii = any(_printable(ch) for ch in data)
    out = b""
    if has_hex:
        out += b"0x" + data.hex().upper().encode() + (b"  " if has_ascii else b" ")
    if has_ascii:
        text = b"".join(bytes([ch]) if _printable(ch) else b"\\%03o" % ch for ch in data)
        out += b'"' + text + b'"'
    return out


def timedate(seconds: int) -> bytes:
    # CSSM timedate: "YYYYMMDDhhmmssZ" and a NUL, in UTC
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(seconds)).encode() + b"\x00"


def _value(record: Record, tag: str) -> bytes | None:
    strings = {"\x00\x00\x00\x07": record.label, "acct": record.account,
               "svce": record.service, **record.attrs}
    if tag in ("cdat", "mdat"):
        return timedate(record.cdat if tag == "cdat" else record.mdat)
    value = strings.get(tag)
    return None if value is None else raw(value)


def attributes(record: Record, keychain_path: str) -> bytes:
    """``print_keychain_item_attributes`` without data or ACL."""
    lines = [b"keychain: " + print_buffer(raw(keychain_path)), b"version: 512",
             b"class: " + print_buffer(b"genp"), b"attributes:"]
    lines += [attribute_line(record, tag, kind) for tag, kind in _SCHEMA]
    return b"\n".join(lines) + b"\n"


def attribute_line(record: Record, tag: str, kind: str) -> bytes:
    value = _value(record, tag)
    shown = b"<NULL>" if value is None else print_buffer(value)
    return b"    " + print_buffer(tag.encode("latin-1")) + f"<{kind}>=".encode() + shown


def requirement(app: str, creator: str) -> str:
    # [inferred] what `codesign -d -r-` gives for Apple's tool, an ad-hoc and a team binary
    if app == SECURITY_TOOL:
        return 'identifier "com.apple.security" and anchor apple'
    name = app.rstrip("/").rsplit("/", 1)[-1]
    if creator.startswith("cdhash:"):
        return f'cdhash H"{creator.removeprefix("cdhash:")}"'
    if creator.startswith("teamid:"):
        team = creator.removeprefix("teamid:")
        return (f'identifier "{name}" and anchor apple generic and '
                f'certificate leaf[subject.OU] = "{team}"')
    return f'identifier "{name}"'


def _entry(index: int, rights: str, description: bytes, apps: bytes) -> bytes:
    count = len(rights.split())
    return (f"    entry {index}:\n        authorizations ({count}): {rights}\n"
            "        don't-require-password\n        description: ").encode() + description \
        + b"\n" + apps


def _applications(record: Record) -> bytes:
    if record.apps is None:
        return b"        applications: <null>\n"
    out = f"        applications ({len(record.apps)}):\n".encode()
    for index, app in enumerate(record.apps):
        out += f"            {index}: ".encode() + raw(app) + b" (OK)\n"
        out += b"                requirement: " + raw(requirement(app, record.creator)) + b"\n"
    return out


def integrity_digest(record: Record) -> str:
    # [inferred] a digest of the attributes; only its shape (hex) matters to a reader
    material = raw(f"{record.service}\x00{record.account}\x00{record.mdat}")
    return hashlib.sha256(material).hexdigest()


def access(record: Record) -> bytes:
    """``print_access`` for an item: the standard three entries, integrity and partition list.

    Entry texts are Apple's (keychain_utilities.c); which entries an item has and their order
    are [inferred] from Access::makeStandard and securityd's integrity and partition entries.
    """
    label = raw(record.label)
    null_apps = b"        applications: <null>\n"
    entries = [
        _entry(0, "encrypt", label, null_apps),
        _entry(1, _DECRYPT_RIGHTS, label, _applications(record)),
        _entry(2, "change_acl", label, b"        applications (0):\n"),
        _entry(3, "integrity", integrity_digest(record).encode(), null_apps),
        # print_partition_id_list decodes the entry's hex plist and prints the ids
        _entry(4, "partition_id", raw(", ".join(record.partitions)), null_apps),
    ]
    return f"access: {len(entries)} entries\n".encode() + b"".join(entries)
