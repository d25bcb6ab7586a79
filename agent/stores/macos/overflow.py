"""The CLI's overflow items, followed read-only.

When the main item's document grows past what one ``security -i`` line holds, the CLI moves
sections into ``<service>-overflow-a|b`` (AES-256-GCM, key in the main item's
``keychainOverflow.key``) and leaves a pointer. Some sections are bound to the login: the CLI
merges them back only while the **binding** holds, which depends on a hash of
``claudeAiOauth``. credsync never writes an overflow item and never writes a document whose
binding held before the change and not after (the CLI would drop those sections silently).

The binding (2.1.332): with ``claudeAiOauth`` in the main item and an ``organizationUuid``
other than ``""`` (absent counts as other), the pointer's ``login`` must equal the first 16 hex
of sha256 of ``JSON.stringify([claudeAiOauth])``; otherwise the pointer must carry a ``login``
and the main item's ``organizationUuid``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from agent.crypto import CryptoError, open_sealed
from agent.jsondoc import Number

POINTER_KEY = "keychainOverflow"
SLOTS = ("a", "b")
OAUTH_KEY = "claudeAiOauth"


def pointer(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The overflow pointer, as the CLI accepts it (a known slot and a string key), or None."""
    found = doc.get(POINTER_KEY) if doc is not None else None
    if isinstance(found, dict) and found.get("slot") in SLOTS and \
            isinstance(found.get("key"), str):
        return found
    return None


def _js_value(value: Any) -> Any:
    # JSON.stringify writes an integral number without a fraction: 1.0 is "1".
    if isinstance(value, Number):
        as_float = float(value)
        return int(as_float) if as_float.is_integer() and abs(as_float) < 2**53 else as_float
    if isinstance(value, dict):
        return {k: _js_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_js_value(v) for v in value]
    return value


def js_stringify(value: Any) -> str:
    """``JSON.stringify`` of a parsed document value: compact, keys in document order."""
    return json.dumps(_js_value(value), separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def login_hash(doc: Mapping[str, Any]) -> str:
    # JSON.stringify([undefined]) is "[null]": a missing login hashes like a null one.
    text = js_stringify([doc.get(OAUTH_KEY)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def binding_holds(doc: Mapping[str, Any] | None) -> bool:
    """Would the CLI merge the login-bound overflow sections into this main document?"""
    if doc is None:
        return False
    ptr = pointer(doc)
    if ptr is None:
        return False
    main = {k: v for k, v in doc.items() if k != POINTER_KEY}
    if OAUTH_KEY not in main or main.get("organizationUuid") == "":
        return "login" in ptr and ptr.get("organizationUuid") == main.get("organizationUuid")
    return ptr.get("login") == login_hash(main)


def breaks_binding(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    """The one change credsync must never make."""
    return binding_holds(before) and not binding_holds(after)


def open_overflow(ptr: Mapping[str, Any], blob_text: str) -> dict[str, Any] | None:
    """The sealed sections of an overflow item, or None when it does not open (as the CLI: an
    overflow that does not decrypt leaves the main item alone)."""
    try:
        key = base64.b64decode(str(ptr["key"]), validate=True)
        blob = base64.b64decode(blob_text.strip(), validate=True)
        sections = json.loads(open_sealed(key, blob).decode("utf-8"))
    except (CryptoError, binascii.Error, ValueError, UnicodeDecodeError, KeyError):
        return None
    return sections if isinstance(sections, dict) else None


def sealed_login(doc: Mapping[str, Any], sections: Mapping[str, Any] | None) -> Any:
    """The ``claudeAiOauth`` the CLI would see when the main item holds none: the sealed one,
    if the binding lets it through; else None."""
    if OAUTH_KEY in doc or sections is None or not binding_holds(doc):
        return None
    return sections.get(OAUTH_KEY)
