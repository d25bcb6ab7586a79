"""The credential value and the parser of the Claude Code credential document.

A ``Credential`` is the ``claudeAiOauth`` object of the CLI's document, frozen. Every key of that
object is kept (``oauth``), so that a copy written elsewhere loses nothing the CLI stored. The
secrets never appear in ``repr``; ``fingerprint`` is what logs and status show instead.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent import jsondoc

OAUTH_KEY = "claudeAiOauth"
MAX_DOCUMENT_BYTES = 1_000_000
# 9999-12-31T23:59:59.999Z: a later expiry cannot be shown as a date, so it is garbage, not a
# login that would win every freshness contest and then fail every log line and status report.
MAX_EXPIRES_AT_MS = 253_402_300_799_999
# Claude tokens (sk-ant-...), and any long base64url-ish run: JWTs, opaque tokens, secrets.
SECRET_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]+|[A-Za-z0-9_\-]{40,}={0,2}")


def fingerprint_of(secret: str) -> str:
    """A short, stable, non-reversible name for a secret, safe to log."""
    if not secret:
        return "-"
    return hashlib.sha256(secret.encode(errors="surrogatepass")).hexdigest()[:10]


def redact(text: str) -> str:
    """``text`` with anything token-like replaced by its fingerprint (defence in depth: code
    must already show fingerprints only)."""
    return SECRET_PATTERN.sub(lambda m: f"[redacted:{fingerprint_of(m.group(0))}]", text)


def ms_or_none(value: Any) -> int | None:
    """A JSON number of milliseconds as an int, or None when it is not a usable one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value) if abs(value) <= MAX_EXPIRES_AT_MS else None


@dataclass(frozen=True)
class Credential:
    oauth: Mapping[str, Any] = field(repr=False)

    def __post_init__(self) -> None:
        # A read-only copy: a credential passed around must never change under anyone.
        object.__setattr__(self, "oauth", MappingProxyType(dict(self.oauth)))

    @classmethod
    def build(
        cls,
        access_token: str,
        refresh_token: str,
        expires_at_ms: int,
        **extra: Any,
    ) -> Credential:
        return cls({"accessToken": access_token, "refreshToken": refresh_token,
                    "expiresAt": expires_at_ms, **extra})

    @property
    def access_token(self) -> str:
        return str(self.oauth.get("accessToken", ""))

    @property
    def refresh_token(self) -> str:
        return str(self.oauth.get("refreshToken", ""))

    @property
    def expires_at_ms(self) -> int:
        return ms_or_none(self.oauth.get("expiresAt", 0)) or 0

    @property
    def expires_at(self) -> float:
        return self.expires_at_ms / 1000.0

    @property
    def refresh_token_expires_at(self) -> float | None:
        value = ms_or_none(self.oauth.get("refreshTokenExpiresAt"))
        return value / 1000.0 if value is not None and value > 0 else None

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.access_token)

    @property
    def is_blank(self) -> bool:
        return not self.access_token or not self.refresh_token or self.expires_at_ms <= 0

    def same_tokens(self, other: Credential | None) -> bool:
        return other is not None and dict(self.oauth) == dict(other.oauth)

    def newer_than(self, other: Credential | None, supersedes: Credential | None) -> bool:
        """Would writing ``other`` over this one go backwards? Not when ``other`` supersedes
        exactly this credential: a refresh answer replaces the login it was redeemed from even
        when the server gave it a shorter life."""
        return self.fresher_than(other) and not self.same_tokens(supersedes)

    def fresher_than(self, other: Credential | None) -> bool:
        return other is None or self.expires_at_ms > other.expires_at_ms

    def to_json_obj(self) -> dict[str, Any]:
        """The object with plain numbers (for credsync's own files); ``merged_document`` keeps
        each number's source text for the CLI's document."""
        return {key: _plain(value) for key, value in self.oauth.items()}

    def __repr__(self) -> str:
        return f"Credential(fp={self.fingerprint}, expires_at_ms={self.expires_at_ms})"


class ReadState(str, enum.Enum):
    VALID = "valid"
    CLEARED = "cleared"  # the CLI's cleared form: empty tokens, expiresAt 0
    LOGGED_OUT = "logged-out"  # the document is there, its claudeAiOauth entry is not
    MISSING = "missing"  # nothing there at all
    INVALID = "invalid"  # unparsable, wrong types, oversized
    ERROR = "error"  # could not be read (I/O, keychain unavailable)


@dataclass(frozen=True)
class Reading:
    state: ReadState
    credential: Credential | None = None
    detail: str = ""

    @property
    def valid(self) -> Credential | None:
        return self.credential if self.state is ReadState.VALID else None

    @property
    def damaged(self) -> bool:
        """Cleared or garbage: what the guardian repairs."""
        return self.state in (ReadState.CLEARED, ReadState.INVALID)


def _check_oauth(oauth: Any) -> str | None:
    """Return a problem with the claudeAiOauth object, or None."""
    if not isinstance(oauth, dict):
        return f"{OAUTH_KEY} is {type(oauth).__name__}, expected an object"
    for key in ("accessToken", "refreshToken"):
        if key in oauth and not isinstance(oauth[key], str):
            return f"{OAUTH_KEY}.{key} is {type(oauth[key]).__name__}, expected a string"
        if key in oauth and not _token_text(oauth[key]):
            # A token never holds these; copied into an env or token-file sink, a newline or a
            # quote would change what a session reads (or runs, for a sourced env file).
            return f"{OAUTH_KEY}.{key} holds whitespace or control characters"
    expires = oauth.get("expiresAt", 0)
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        return f"{OAUTH_KEY}.expiresAt is {type(expires).__name__}, expected milliseconds"
    if ms_or_none(expires) is None:
        return f"{OAUTH_KEY}.expiresAt is out of range (not a finite time before year 10000)"
    if not _finite(oauth):
        # The CLI never writes one; kept, it would make last-good unreadable as JSON.
        return f"{OAUTH_KEY} holds a number too large for a double (such as 1e400)"
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, jsondoc.Number):
        return float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _finite(value: Any) -> bool:
    """No number in ``value`` overflows a float: credsync's own files could not hold it."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    return True


def _token_text(value: str) -> bool:
    return all(ch.isprintable() and not ch.isspace() for ch in value)


def parse_object(raw: bytes) -> dict[str, Any] | Reading:
    """A JSON document whose top level is an object: the object, or the INVALID reading that
    says why not. Shared by every file credsync reads a login from."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        return Reading(ReadState.INVALID, detail=f"over {MAX_DOCUMENT_BYTES} bytes")
    if not raw.strip():
        return Reading(ReadState.INVALID, detail="empty file")
    try:
        # Each number keeps its source text: a rewrite must give the CLI back what it wrote.
        doc = jsondoc.loads(raw)
    except json.JSONDecodeError as exc:
        # JSON that ends early is what a write in progress looks like between two chunks.
        # A cut inside a string is reported at the string's start, not at the end.
        cut = exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")
        return Reading(ReadState.INVALID, detail="truncated JSON" if cut else
                       f"not JSON ({type(exc).__name__})")
    except (ValueError, RecursionError) as exc:
        return Reading(ReadState.INVALID, detail=f"not JSON ({type(exc).__name__})")
    if not isinstance(doc, dict):
        return Reading(ReadState.INVALID, detail="top level is not an object")
    return doc


def parse_document(raw: bytes) -> tuple[Reading, dict[str, Any] | None]:
    """Parse a whole CLI credential document; return the reading and the document object."""
    doc = parse_object(raw)
    if isinstance(doc, Reading):
        return doc, None
    return reading_from_document(doc), doc


def reading_from_document(doc: Mapping[str, Any]) -> Reading:
    if OAUTH_KEY not in doc:
        return Reading(ReadState.LOGGED_OUT, detail=f"no {OAUTH_KEY} entry")
    oauth = doc[OAUTH_KEY]
    problem = _check_oauth(oauth)
    if problem:
        return Reading(ReadState.INVALID, detail=problem)
    cred = Credential(oauth)
    if cred.is_blank:
        return Reading(ReadState.CLEARED, cred, detail="cleared (empty tokens or expiresAt 0)")
    return Reading(ReadState.VALID, cred)


def merged_document(existing: Mapping[str, Any] | None, cred: Credential) -> dict[str, Any]:
    """The document to write: every key of ``existing`` kept, only claudeAiOauth replaced."""
    doc = dict(existing or {})
    doc[OAUTH_KEY] = dict(cred.oauth)  # not to_json_obj: numbers keep their source text
    return doc


def render_document(doc: Mapping[str, Any], compact: bool = False) -> bytes:
    """The bytes of a credential document: every number as it was read, never NaN or Infinity
    (``JSON.parse`` rejects them; what ``parse_document`` read holds neither)."""
    if compact:
        return jsondoc.dumps(doc, indent=None, separators=(",", ":"))
    return jsondoc.dumps(doc, indent=2) + b"\n"


def freshest(candidates: list[Credential]) -> Credential | None:
    """The valid credential with the latest expiry; blank ones never win."""
    usable = [c for c in candidates if not c.is_blank]
    return max(usable, key=lambda c: c.expires_at_ms, default=None)
