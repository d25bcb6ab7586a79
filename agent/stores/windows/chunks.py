"""A credential document over Credential Manager items, laid out as the CLI lays it out.

The CLI (2.1.332; ``strings -n 8 claude.exe`` line 592475, functions ``B`` count item, ``N``
read, ``Re`` write, ``Pe`` delete; line 592460 ``qJn`` = 2400, ``SWr`` = 256, ``HVs`` the
count check) stores ``JSON.stringify(document)``:
- up to ``CHUNK`` (2400) UTF-8 bytes: as the main item ``<service>/claude-code-user``;
- longer: base64 of the UTF-8 bytes, cut into pieces of 2400 characters, items ``...#0`` ..
  ``...#<n-1>``, then the count item ``...#m`` = ``{"n":<pieces>,"l":<base64 length>}``, then
  the main item is deleted. At most ``MAX_CHUNKS`` (256) pieces (about 460 kB).
- Reading: a valid ``#m`` (``n`` an integer 1..256, ``l`` an integer 1..n*2400) wins and the
  pieces are joined; a missing piece or a length other than ``l`` is a failed read (the CLI
  then skips its write). No valid ``#m``: the main item, as text.
- The marker ``...#p`` holds the highest piece count that may exist while a write is under way
  (set first, deleted last), so that a later clean-up finds pieces a killed writer left.
  A write deletes the pieces of the previous count item beyond its own; pieces beyond both are
  left alone (the CLI's log-out probes for them).

Every call goes through a ``CredentialVault``; nothing here is platform specific.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from agent import jsondoc
from agent.errors import StoreError
from agent.stores.windows.credman import CredentialVault, VaultError
from agent.stores.windows.identity import META, PENDING, CredmanIdentity

CHUNK = 2400
MAX_CHUNKS = 256


class ChunkError(StoreError):
    """The items do not make a whole document (the CLI's "chunked read inconsistent")."""


class TooLarge(StoreError):
    """A document the CLI could not store in Credential Manager either."""


@dataclass(frozen=True)
class Meta:
    n: int
    length: int


def document_text(doc: dict[str, Any]) -> str:
    """``JSON.stringify`` of the document: compact, non-ASCII as itself, lone surrogates and
    control characters escaped, each number as it was read."""
    ascii_text = jsondoc.dumps(doc, indent=None, separators=(",", ":")).decode("ascii")
    return _ESCAPE.sub(_unescape, ascii_text)


# Each escape, left to right: a backslash pair is consumed whole, so "\\u00e9" stays text.
_ESCAPE = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})|\\u([0-9a-f]{4})|\\.")


def _unescape(match: re.Match[str]) -> str:
    high, low, single = match.group(1), match.group(2), match.group(3)
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00))
    if single is not None:
        code = int(single, 16)
        # JSON.stringify escapes control characters and lone surrogates; DEL and the rest of
        # Unicode go as they are.
        if code >= 0x7F and not 0xD800 <= code <= 0xDFFF:
            return chr(code)
    return match.group(0)


def _text(blob: bytes | None) -> str | None:
    # Bun: an empty blob is no value; bytes that are not UTF-8 give no string either.
    if not blob:
        return None
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() else None


def read_meta(vault: CredentialVault, ident: CredmanIdentity) -> Meta | None:
    raw = _text(vault.read(ident.part(META)[0]))
    if not raw:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    n, length = _integer(obj.get("n")), _integer(obj.get("l"))
    if n is None or length is None or not 0 < n <= MAX_CHUNKS or not 0 < length <= n * CHUNK:
        return None
    return Meta(n, length)


def read_text(vault: CredentialVault, ident: CredmanIdentity) -> str | None:
    """The document's text as the CLI reads it; None when there is none. ChunkError for
    pieces that do not add up; VaultError for a failed call."""
    meta = read_meta(vault, ident)
    if meta is None:
        return _text(vault.read(ident.target))
    pieces = [_text(vault.read(ident.part(i)[0])) for i in range(meta.n)]
    joined = "".join(p or "" for p in pieces)
    if len(joined) != meta.length or any(p is None for p in pieces):
        raise ChunkError(f"Credential Manager item {ident.target!r}: chunked read "
                         f"inconsistent ({len(joined)} of {meta.length} characters across "
                         f"{meta.n} chunks)")
    return base64.b64decode(joined).decode("utf-8", "replace")


def write_text(vault: CredentialVault, ident: CredmanIdentity, text: str) -> None:
    """Store ``text`` in the CLI's layout, in the CLI's order. VaultError as the first failed
    set (the previous document is then still what a reader gets, or the new one)."""
    old = read_meta(vault, ident)
    data = text.encode("utf-8")
    if len(data) <= CHUNK:
        _write_single(vault, ident, data, old)
    else:
        _write_chunked(vault, ident, data, old)


def _set(vault: CredentialVault, target_user: tuple[str, str], blob: bytes) -> None:
    vault.write(target_user[0], target_user[1], blob)


def _quietly(vault: CredentialVault, target: str) -> None:
    # The CLI lets these deletions fail (Promise.allSettled / .catch): a stale piece is never
    # read, as the count item no longer names it.
    with contextlib.suppress(VaultError):
        vault.delete(target)


def _write_single(vault: CredentialVault, ident: CredmanIdentity, data: bytes,
                  old: Meta | None) -> None:
    vault.write(ident.target, ident.account, data)
    if old is None:
        return
    _set(vault, ident.part(PENDING), str(old.n).encode())
    vault.delete(ident.part(META)[0])  # from here on readers take the main item
    for i in range(old.n):
        _quietly(vault, ident.part(i)[0])
    _quietly(vault, ident.part(PENDING)[0])


def _write_chunked(vault: CredentialVault, ident: CredmanIdentity, data: bytes,
                   old: Meta | None) -> None:
    encoded = base64.b64encode(data).decode("ascii")
    count = math.ceil(len(encoded) / CHUNK)
    if count > MAX_CHUNKS:
        raise TooLarge(f"the document ({len(data)} bytes) is too large for Credential Manager "
                       f"(at most about {MAX_CHUNKS * CHUNK * 3 // 4} bytes)")
    before = old.n if old is not None else 0
    _set(vault, ident.part(PENDING), str(max(before, count)).encode())
    for i in range(count):
        _set(vault, ident.part(i), encoded[i * CHUNK:(i + 1) * CHUNK].encode("ascii"))
    meta = json.dumps({"n": count, "l": len(encoded)}, separators=(",", ":"))
    _set(vault, ident.part(META), meta.encode("ascii"))
    _quietly(vault, ident.target)
    for i in range(count, before):
        _quietly(vault, ident.part(i)[0])
    _quietly(vault, ident.part(PENDING)[0])


def stamp(vault: CredentialVault, ident: CredmanIdentity) -> frozenset[tuple[str, int]]:
    """Every item of this login with its LastWritten: changes whenever any of them is
    written or deleted (no blob is read)."""
    return frozenset((i.target.casefold(), i.last_written) for i in vault.items(ident.prefix))
