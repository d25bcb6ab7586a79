"""Codex's refresh-token grant: ``HttpRefresher``'s transport, client set-up and error mapping,
with Codex's request, answer and refusals (``../shared/notes/codex.md``; ``openai/codex``
``codex-rs/login/src/auth/manager.rs``: ``request_chatgpt_token_refresh``, ``persist_tokens``,
``classify_refresh_token_failure``).

Request: ``POST token_url``, JSON ``{"client_id", "grant_type": "refresh_token",
"refresh_token"}`` (plus ``"refresh_reason": "proactive_expiry"``, as 0.171.0 sends it).
Answer: ``{id_token?, access_token?, refresh_token?}`` and no ``expires_in``: a field the answer
lacks keeps its old value (``persist_tokens``), the expiry is the new access token's JWT ``exp``,
``last_refresh`` is now. Refusals (``classify_refresh_token_failure``): any 401, any answer whose
code is ``refresh_token_expired``/``_reused``/``_invalidated``, and a 400 ``invalid_grant`` are
final (``GrantRejected``); anything else is transient. The code is read where Codex reads it:
``{"error": {"code": ...}}``, ``{"error": "..."}`` or ``{"code": ...}``, compared ignoring case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from agent.clock import Clock
from agent.codex import tokens
from agent.config import CodexSection, RefreshSection
from agent.credential import Credential
from agent.errors import TransientRefreshError
from agent.refresh.http import HttpRefresher, RefreshResult, safe_code

PROACTIVE = "proactive_expiry"
# Codex's RefreshTokenFailedReason: Expired, Exhausted, Revoked.
FINAL_CODES = frozenset({"refresh_token_expired", "refresh_token_reused",
                         "refresh_token_invalidated"})
# The keys of a Codex credential that come from its auth.json tokens; every other key is kept.
DERIVED_KEYS = ("accessToken", "refreshToken", "expiresAt", "idToken", "accountId", "userId",
                "issuedAt", "lastRefresh")
ANSWER_KEYS = (("access_token", "accessToken"), ("refresh_token", "refreshToken"),
               ("id_token", "idToken"))


class CodexRefresher(HttpRefresher):
    """``refresh(cred) -> RefreshResult`` for a Codex login (a ``tokens.credential_from_auth``
    credential); ``expires_in`` is the new access token's lifetime (``exp - iat``, else
    ``exp`` - the time the request was sent)."""

    def __init__(self, token_url: str, client_id: str, timeout_s: float,
                 clock: Clock | None = None, transport: httpx.BaseTransport | None = None,
                 refresh_reason: str | None = PROACTIVE) -> None:
        super().__init__(token_url, client_id, "", "codex", timeout_s, clock=clock,
                         transport=transport)
        self.refresh_reason = refresh_reason

    @classmethod
    def from_sections(cls, codex: CodexSection, refresh: RefreshSection,
                      clock: Clock | None = None,
                      transport: httpx.BaseTransport | None = None) -> CodexRefresher:
        """``[codex]`` chooses the endpoint and client; ``[refresh]`` the timeout."""
        return cls(codex.token_url, codex.client_id, refresh.timeout_s, clock, transport)

    def _build(self, refresh_token: str) -> httpx.Request:
        body = {"client_id": self.client_id, "grant_type": "refresh_token",
                "refresh_token": refresh_token}
        if self.refresh_reason:
            body["refresh_reason"] = self.refresh_reason
        return self._client.build_request("POST", self.token_url, json=body,
                                          headers={"Accept": "application/json"})

    def _success(self, cred: Credential, body: Mapping[str, Any] | None,
                 sent_at: float) -> RefreshResult:
        answer = _answer(body, self.shown_url)
        new = refreshed(cred, answer, self._clock.now())
        return RefreshResult(new, _lifetime(new, sent_at))

    def _error_code(self, body: Mapping[str, Any] | None) -> str | None:
        if not body:
            return None
        error = body.get("error")
        if isinstance(error, Mapping):
            nested = safe_code(error.get("code"))
            if nested:
                return nested.lower()
        elif isinstance(error, str):
            code = safe_code(error)
            return code.lower() if code else None
        code = safe_code(body.get("code"))
        return code.lower() if code else None

    def _error_text(self, body: Mapping[str, Any] | None) -> Any:
        error = body.get("error") if body else None
        if isinstance(error, Mapping):
            return error.get("message")
        return body.get("error_description") if body else None

    def _terminal(self, status: int, code: str | None) -> bool:
        return status == 401 or code in FINAL_CODES or (status == 400 and code == "invalid_grant")


def _answer(body: Mapping[str, Any] | None, url: str) -> dict[str, str]:
    """The tokens a 200 carried, by credential key; a 200 that cannot be read means a rotated
    token may be lost (``may_have_rotated``)."""
    if body is None:
        raise TransientRefreshError(f"token endpoint {url} answered 200 with no JSON object",
                                    may_have_rotated=True)
    answer: dict[str, str] = {}
    for field, key in ANSWER_KEYS:
        value = body.get(field)
        if value is None:
            continue  # absent or null: Codex keeps the old value
        if not isinstance(value, str) or not value:
            raise TransientRefreshError(
                f"token endpoint {url} answered 200 with an unusable {field}",
                may_have_rotated=True)
        answer[key] = value
    if "accessToken" not in answer and "refreshToken" not in answer:
        raise TransientRefreshError(
            f"token endpoint {url} answered 200 without access_token or refresh_token",
            may_have_rotated=True)
    return answer


def refreshed(cred: Credential, answer: Mapping[str, str], now: float) -> Credential:
    """``cred`` with the answer's tokens, read back through ``tokens.credential_from_auth`` (one
    decoding of the JWTs), ``lastRefresh`` now; keys of ``cred`` not from auth.json are kept."""
    merged = Credential({**cred.oauth, **answer})
    decoded = tokens.credential_from_auth(tokens.auth_with(None, merged, refreshed_at=now))
    if decoded is None:  # unreachable: both tokens are non-empty strings
        raise TransientRefreshError("the refreshed Codex login could not be read back",
                                    may_have_rotated=True)
    kept = {k: v for k, v in cred.oauth.items() if k not in DERIVED_KEYS}
    return Credential({**kept, **decoded.oauth})


def _lifetime(cred: Credential, sent_at: float) -> float:
    """What the coordinator records as the lifetime: ``exp - iat``, else what is left of it
    (``exp`` - the send time: errs early), 0 for an access token with no ``exp``."""
    lifetime = tokens.lifetime_s(cred)
    if lifetime is not None:
        return lifetime
    if cred.expires_at_ms <= 0:
        return 0.0
    return max(0.0, cred.expires_at_ms / 1000 - sent_at)
