"""A Codex login as credsync's ``Credential``, and back into Codex's ``auth.json`` document.

Codex keeps ``{"OPENAI_API_KEY": ..., "tokens": {"id_token", "access_token", "refresh_token",
"account_id"}, "last_refresh": RFC 3339}`` (``AuthDotJson``). Its freshness is the access
token's JWT ``exp`` (decoded without checking the signature, as Codex does); an opaque access
token counts as fresh for 8 days after ``last_refresh`` (Codex's own age rule).

The ``Credential`` mapping (the winner rule, ledger and journal work on it unchanged):
``accessToken``, ``refreshToken``, ``expiresAt`` (ms), and Codex's own: ``idToken``,
``accountId`` (``tokens.account_id``, else the id token's ``chatgpt_account_id``),
``userId`` (the id token's ``chatgpt_user_id`` / ``user_id``), ``issuedAt`` (ms, the access
token's ``iat``, for the lifetime ``exp - iat``), ``lastRefresh`` (the document's text).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from agent.credential import Credential

AUTH_CLAIMS = "https://api.openai.com/auth"
OPAQUE_LIFETIME_S = 8 * 86400.0  # Codex refreshes an opaque token on age: 8 days
MAX_JWT_CHARS = 64_000


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified (Codex does not verify it either); None if it is not
    one."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_JWT_CHARS:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        obj = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 < value < 1e11 else None


def parse_time(text: Any) -> float | None:
    """An RFC 3339 time (``last_refresh``) as Unix seconds; None when it is not one."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        # Codex writes nanoseconds; Python parses at most microseconds.
        head, dot, tail = text.partition(".")
        if not dot:
            return None
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits):]
        try:
            parsed = dt.datetime.fromisoformat(f"{head}.{digits[:6]}{zone}".replace("Z", "+00:00"))
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def format_time(ts: float) -> str:
    """``last_refresh`` as Codex writes it: RFC 3339, UTC, ``Z``."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def identity(id_token: str, account_id: Any) -> tuple[str | None, str | None]:
    """(account id, user id): ``tokens.account_id`` first, else the id token's claims."""
    claims = (jwt_claims(id_token) or {}).get(AUTH_CLAIMS)
    auth = claims if isinstance(claims, dict) else {}
    account = account_id if isinstance(account_id, str) and account_id else \
        auth.get("chatgpt_account_id")
    user = auth.get("chatgpt_user_id") or auth.get("user_id")
    return (account if isinstance(account, str) and account else None,
            user if isinstance(user, str) and user else None)


def credential_from_auth(doc: Mapping[str, Any]) -> Credential | None:
    """The login in an ``auth.json`` document; None when it holds none (an API key only, no
    tokens, or tokens without a refresh token)."""
    tokens = doc.get("tokens")
    if not isinstance(tokens, dict):
        return None
    access, refresh = tokens.get("access_token"), tokens.get("refresh_token")
    id_token = tokens.get("id_token")
    if not isinstance(access, str) or not isinstance(refresh, str) or not access or not refresh:
        return None
    id_text = id_token if isinstance(id_token, str) else ""
    claims = jwt_claims(access) or {}
    exp, iat = _seconds(claims.get("exp")), _seconds(claims.get("iat"))
    last = doc.get("last_refresh")
    if exp is None:
        since = parse_time(last)
        exp = since + OPAQUE_LIFETIME_S if since is not None else None
    account, user = identity(id_text, tokens.get("account_id"))
    oauth: dict[str, Any] = {"accessToken": access, "refreshToken": refresh,
                             "expiresAt": int(exp * 1000) if exp is not None else 0,
                             "idToken": id_text, "accountId": account, "userId": user}
    if iat is not None:
        oauth["issuedAt"] = int(iat * 1000)
    if isinstance(last, str):
        oauth["lastRefresh"] = last
    return Credential(oauth)


def account_of(cred: Credential) -> str | None:
    value = cred.oauth.get("accountId")
    return value if isinstance(value, str) and value else None


def same_identity(a: Credential, b: Credential) -> bool:
    """May ``b`` replace ``a``? Only the same account (and user, when both say)."""
    if account_of(a) != account_of(b):
        return False
    ua, ub = a.oauth.get("userId"), b.oauth.get("userId")
    return ua is None or ub is None or ua == ub


def lifetime_s(cred: Credential) -> float | None:
    """``exp - iat`` of the access token, when it says."""
    issued = cred.oauth.get("issuedAt")
    if isinstance(issued, int) and cred.expires_at_ms > issued:
        return (cred.expires_at_ms - issued) / 1000
    return None


def auth_with(doc: Mapping[str, Any] | None, cred: Credential,
              refreshed_at: float | None = None) -> dict[str, Any]:
    """``doc`` holding ``cred``: its tokens replaced, every other key kept as it was;
    ``last_refresh`` set to ``refreshed_at`` when given (a refresh), else to the credential's
    own (a copy from another home)."""
    out: dict[str, Any] = dict(doc) if doc is not None else {"OPENAI_API_KEY": None}
    old = out.get("tokens")
    tokens: dict[str, Any] = dict(old) if isinstance(old, dict) else {}
    tokens["id_token"] = cred.oauth.get("idToken") or tokens.get("id_token") or ""
    tokens["access_token"] = cred.access_token
    tokens["refresh_token"] = cred.refresh_token
    account = cred.oauth.get("accountId")
    if account is not None or "account_id" not in tokens:
        tokens["account_id"] = account
    out["tokens"] = tokens
    if refreshed_at is not None:
        out["last_refresh"] = format_time(refreshed_at)
    elif isinstance(cred.oauth.get("lastRefresh"), str):
        out["last_refresh"] = cred.oauth["lastRefresh"]
    return out
