"""Codex's ``AuthDotJson`` document as its stores hold it (``auth.json``, the keyring item's
secret): parsed into a ``Reading``, rendered back, and the one rule deciding whether credsync
may put a login over what a store holds.

States: a login is VALID. No file or item is MISSING. A document that holds no ChatGPT login
(an API key, an agent identity or a personal access token only) is neither a login nor a logout
of one: it reads MISSING with a detail saying what it holds, and credsync never writes a login
over it (the user chose that way of signing in). Anything else unusable is INVALID. There is no
cleared form: Codex never blanks its store.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from agent import jsondoc
from agent.codex.tokens import credential_from_auth, same_identity
from agent.credential import Credential, Reading, ReadState, parse_object

# What a document may hold instead of a ChatGPT login (credsync does not manage them).
OTHER_LOGINS = ("OPENAI_API_KEY", "agent_identity", "personal_access_token")


class Refusal(str, enum.Enum):
    """Why a login is not written over what a store holds."""

    SAME = "it holds this login already"
    FRESHER = "it holds a fresher login"
    OTHER_IDENTITY = "it holds a login of another account or user"
    OTHER_LOGIN = "it holds an API key or another non-ChatGPT login"


def parse_auth(raw: bytes) -> tuple[Reading, dict[str, Any] | None]:
    """The reading of an ``auth.json`` document and the document object (None: garbage)."""
    doc = parse_object(raw)  # the same garbage rules (and repair grace) as the CLI's file
    if isinstance(doc, Reading):
        return doc, None
    return reading_from_auth(doc), doc


def other_logins(doc: Mapping[str, Any]) -> list[str]:
    """The non-ChatGPT ways of signing in a document holds (set, non-empty)."""
    return [key for key in OTHER_LOGINS if doc.get(key)]


def reading_from_auth(doc: Mapping[str, Any]) -> Reading:
    tokens = doc.get("tokens")
    if tokens is None:
        held = other_logins(doc)
        what = f"{', '.join(held)} only" if held else "no tokens"
        return Reading(ReadState.MISSING, detail=f"no ChatGPT login ({what})")
    problem = _tokens_problem(tokens)
    if problem is not None:
        return Reading(ReadState.INVALID, detail=problem)
    cred = credential_from_auth(doc)
    if cred is None:
        return Reading(ReadState.INVALID, detail="tokens without an access or refresh token")
    if cred.is_blank:
        return Reading(ReadState.INVALID, detail="the access token has no expiry (not a JWT) "
                                                 "and there is no last_refresh")
    return Reading(ReadState.VALID, cred)


def _tokens_problem(tokens: Any) -> str | None:
    if not isinstance(tokens, dict):
        return f"tokens is {type(tokens).__name__}, expected an object"
    for key in ("id_token", "access_token", "refresh_token"):
        value = tokens.get(key)
        if value is not None and not isinstance(value, str):
            return f"tokens.{key} is {type(value).__name__}, expected a string"
        if isinstance(value, str) and not all(c.isprintable() and not c.isspace()
                                              for c in value):
            return f"tokens.{key} holds whitespace or control characters"
    return None


def render_auth(doc: Mapping[str, Any], compact: bool = False) -> bytes:
    """The bytes Codex writes: pretty JSON (2 spaces, no final newline) for ``auth.json``,
    compact JSON for the keyring item's secret."""
    if compact:
        return jsondoc.dumps(doc, indent=None, separators=(",", ":"))
    return jsondoc.dumps(doc, indent=2)


def same_login(a: Credential, b: Credential) -> bool:
    """The same tokens (whatever else the credentials say, such as ``lastRefresh``)."""
    return (a.access_token, a.refresh_token, a.oauth.get("idToken") or "") == \
        (b.access_token, b.refresh_token, b.oauth.get("idToken") or "")


def refusal(reading: Reading, doc: Mapping[str, Any] | None, cred: Credential,
            supersedes: Credential | None) -> Refusal | None:
    """Why ``cred`` must not replace what a store holds (``reading`` of ``doc``), or None.

    Never backwards (a fresher login other than ``supersedes`` stays), never across accounts
    (Codex's guarded reload fails for good on another account id), never over an API key."""
    current = reading.valid
    if current is None:
        if doc is not None and reading.state is ReadState.MISSING and other_logins(doc):
            return Refusal.OTHER_LOGIN
        return None
    if same_login(current, cred):
        return Refusal.SAME
    if not same_identity(current, cred):
        return Refusal.OTHER_IDENTITY
    if current.newer_than(cred, supersedes):
        return Refusal.FRESHER
    return None
