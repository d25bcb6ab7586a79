"""The OAuth refresh-token grant over HTTP: the only module that imports httpx.

``HttpRefresher.refresh(cred)`` sends one refresh request and returns the new credential, or
raises one of:

    InvalidGrantError        the server refused the grant for good (``invalid_grant``, and the
    └── GrantRejected        other ``invalid_*`` / ``unauthorized_client`` answers); carries the
                             error code and status: sending the same token again cannot help
    TransientRefreshError    connection error, timeout, 5xx, 429, a 4xx without a known error
                             code, an unreadable answer: retry later (``retry_after_s`` from the
                             server's Retry-After when it sent one)

No message ever holds a token. ``Backoff`` gives the delay before the next attempt.

A provider with another request or answer (``agent.codex.refresher``) subclasses it and overrides
``_build`` and the ``_success`` / ``_error_code`` / ``_error_text`` / ``_terminal`` hooks; the
transport, the client, and what a lost or dropped answer means stay here.
"""

from __future__ import annotations

import base64
import email.utils
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote_plus

import httpx

from agent.clock import Clock, SystemClock
from agent.config import RefreshSection, safe_url
from agent.credential import Credential, fingerprint_of
from agent.errors import InvalidGrantError, TransientRefreshError

# "codex" is agent.codex.refresher.CodexRefresher's, which builds its own request and reads its
# own answers through the hooks below.
Style = Literal["claude", "oauth2", "codex"]
# Error codes after which the same request can never succeed (RFC 6749 s.5.2).
TERMINAL_ERRORS = frozenset({"invalid_grant", "invalid_client", "invalid_request",
                             "invalid_scope", "unauthorized_client", "unsupported_grant_type"})
_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_DESCRIPTION = 200


class GrantRejected(InvalidGrantError):
    """A terminal refusal; ``error_code`` is the server's code, e.g. ``invalid_grant``."""

    def __init__(self, message: str, error_code: str, status_code: int) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status_code = status_code


@dataclass(frozen=True)
class RefreshResult:
    credential: Credential
    expires_in: float  # seconds, as the server said: the lifetime the scheduler plans with


class HttpRefresher:
    def __init__(
        self,
        token_url: str,
        client_id: str,
        scope: str,
        style: Style,
        timeout_s: float,
        client_secret: str | None = None,
        clock: Clock | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if style == "codex" and type(self)._build is HttpRefresher._build:
            raise ValueError("style codex is agent.codex.refresher.CodexRefresher")
        self.token_url = token_url
        # What messages show: a URL may carry a password, a query or a fragment.
        self.shown_url = safe_url(token_url)
        self.client_id = client_id
        self.scope = scope
        self.style = style
        self.timeout_s = timeout_s
        self._secret = client_secret
        self._clock: Clock = clock or SystemClock()
        # No redirects: a token request must reach the configured endpoint and nothing else.
        self._client = httpx.Client(transport=transport, timeout=timeout_s,
                                    follow_redirects=False)

    @classmethod
    def from_settings(cls, section: RefreshSection, clock: Clock | None = None,
                      transport: httpx.BaseTransport | None = None) -> HttpRefresher:
        return cls(section.token_url, section.client_id, section.scope, section.style,
                   section.timeout_s, section.client_secret, clock, transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpRefresher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def refresh(self, cred: Credential) -> RefreshResult:
        if not cred.refresh_token:
            raise GrantRejected("the credential has no refresh token", "invalid_grant", 0)
        # Taken before sending: the expiry we compute errs early, never late.
        sent_at = self._clock.now()
        try:
            response = self._client.send(self._build(cred.refresh_token))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            # Never reached the server: the refresh token is certainly unspent.
            raise TransientRefreshError(
                f"token endpoint {self.shown_url} unreachable ({type(exc).__name__})") from exc
        except httpx.TimeoutException as exc:
            raise TransientRefreshError(
                f"token endpoint {self.shown_url} timed out after {self.timeout_s:g} s",
                may_have_rotated=True) from exc
        except httpx.HTTPError as exc:
            # Sent, then the connection failed: the server may have rotated the token already.
            raise TransientRefreshError(
                f"token endpoint {self.shown_url} dropped the connection ({type(exc).__name__})",
                may_have_rotated=True) from exc
        return self._result(cred, response, sent_at)

    def _build(self, refresh_token: str) -> httpx.Request:
        headers = {"Accept": "application/json"}
        if self.style == "claude":
            body = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                    "client_id": self.client_id, "scope": self.scope}
            return self._client.build_request("POST", self.token_url, json=body, headers=headers)
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if self.scope:
            form["scope"] = self.scope
        if self._secret is not None:
            # RFC 6749 s.2.3.1: id and secret form-encoded, then HTTP Basic.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self._secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.client_id
        return self._client.build_request("POST", self.token_url, data=form, headers=headers)

    def _result(self, cred: Credential, response: httpx.Response, sent_at: float) -> RefreshResult:
        status = response.status_code
        body = _json_object(response)
        if status == 200:
            return self._success(cred, body, sent_at)
        code = self._error_code(body)
        if code is not None and code in (cred.refresh_token, cred.access_token):
            code = None  # a server echoing the token where its error code goes: never shown
        where = f"token endpoint {self.shown_url} answered {status}"
        named = f" {code}" if code else ""
        if self._terminal(status, code):
            detail = _description(self._error_text(body), cred)
            raise GrantRejected(f"{where}{named}{detail}", code or f"http_{status}", status)
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock.now())
        raise TransientRefreshError(f"{where}{named}", retry_after)

    # The hooks a provider's refresher overrides (agent.codex.refresher): how a success is read
    # into a credential, where the error code is, which refusals are final.

    def _success(self, cred: Credential, body: Mapping[str, Any] | None,
                 sent_at: float) -> RefreshResult:
        return _parse_success(cred, body, sent_at, self.shown_url)

    def _error_code(self, body: Mapping[str, Any] | None) -> str | None:
        error = body.get("error") if body else None
        return safe_code(error)

    def _error_text(self, body: Mapping[str, Any] | None) -> Any:
        return body.get("error_description") if body else None

    def _terminal(self, status: int, code: str | None) -> bool:
        return 400 <= status < 500 and status not in (408, 429) and code in TERMINAL_ERRORS


def safe_code(value: Any) -> str | None:
    """An error code as a server sent it, if it looks like one (it is shown in messages)."""
    return value if isinstance(value, str) and _CODE.match(value) else None


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        obj = response.json()
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _description(text: Any, cred: Credential) -> str:
    if not isinstance(text, str) or not text:
        return ""
    # A server may echo what it was sent: never let a token through.
    for secret in (cred.refresh_token, cred.access_token):
        if secret:
            text = text.replace(secret, f"<{fingerprint_of(secret)}>")
    text = "".join(ch if ch.isprintable() else " " for ch in text)[:MAX_DESCRIPTION]
    return f": {text}"


def _positive_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value > 0 else None


def _parse_success(cred: Credential, body: Mapping[str, Any] | None, sent_at: float,
                   url: str) -> RefreshResult:
    # A 200 means the server rotated the token; an unreadable one means the new pair is lost.
    if body is None:
        raise TransientRefreshError(f"token endpoint {url} answered 200 with no JSON object",
                                    may_have_rotated=True)
    access = body.get("access_token")
    expires_in = _positive_number(body.get("expires_in"))
    if not isinstance(access, str) or not access or expires_in is None:
        raise TransientRefreshError(
            f"token endpoint {url} answered 200 without access_token and expires_in",
            may_have_rotated=True)
    new_refresh = body.get("refresh_token")
    oauth = dict(cred.oauth)
    oauth["accessToken"] = access
    if isinstance(new_refresh, str) and new_refresh:
        oauth["refreshToken"] = new_refresh  # else the old one stays valid: keep it
    oauth["expiresAt"] = round((sent_at + expires_in) * 1000)
    refresh_in = _positive_number(body.get("refresh_token_expires_in"))
    if refresh_in is not None:
        oauth["refreshTokenExpiresAt"] = round((sent_at + refresh_in) * 1000)
    elif _stale_refresh_expiry(cred, oauth, sent_at):
        # A new refresh token without a stated expiry, or an old one the server just honoured
        # after its stated expiry: the old date says nothing true any more.
        oauth.pop("refreshTokenExpiresAt", None)
    scope = body.get("scope")
    if isinstance(scope, str) and scope.strip():
        oauth["scopes"] = scope.split()
    return RefreshResult(Credential(oauth), expires_in)


def _stale_refresh_expiry(cred: Credential, oauth: Mapping[str, Any], sent_at: float) -> bool:
    ends = cred.refresh_token_expires_at
    if ends is None:
        return False
    return oauth.get("refreshToken") != cred.refresh_token or ends <= sent_at


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from ``now``: delta-seconds or an HTTP date (RFC 9110 s.10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


class Backoff:
    """Exponential backoff with full jitter between ``min_s`` and ``max_s``.

    Attempt ``n`` (0 for the first retry) waits a uniform random time in
    ``[min_s, min(max_s, min_s * 2**n)]``; a server's Retry-After is a floor (itself capped at
    ``max_retry_after_s`` so that a hostile header cannot park the agent for days).
    """

    def __init__(self, min_s: float = 1.0, max_s: float = 300.0,
                 max_retry_after_s: float = 3600.0,
                 rand: Callable[[], float] = random.random) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("need 0 < min_s <= max_s")
        self.min_s = min_s
        self.max_s = max_s
        self.max_retry_after_s = max_retry_after_s
        self._rand = rand

    def ceiling(self, attempt: int) -> float:
        exponent = min(max(attempt, 0), 64)  # 2**64 already dwarfs any cap
        return min(self.max_s, self.min_s * 2.0 ** exponent)

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        top = self.ceiling(attempt)
        jittered = self.min_s + (top - self.min_s) * min(max(self._rand(), 0.0), 1.0)
        if retry_after_s is None or retry_after_s <= 0:
            return jittered
        return max(jittered, min(retry_after_s, self.max_retry_after_s))


# --- reachability, for `credsync doctor` ---------------------------------------------------------

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class EndpointAnswer:
    """What a bare request to the token endpoint showed: no token, no body was sent."""

    reachable: bool
    tls: bool  # https, and the certificate and host name verified
    status_code: int | None = None
    server_date: float | None = None  # the answer's Date header (a clock check)
    detail: str = ""


class EndpointProbe:
    """``HEAD <token_url>``: TLS handshake, certificate and host name checked exactly as the
    refresher's client checks them (same httpx defaults, so ``SSL_CERT_FILE`` counts alike).
    Any HTTP answer, 405 included, means the endpoint is reachable: nothing is sent to it that
    could be a grant."""

    def __init__(self, timeout_s: float = PROBE_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.timeout_s = timeout_s
        self._transport = transport

    def check(self, url: str) -> EndpointAnswer:
        tls = url.lower().startswith("https://")
        try:
            with httpx.Client(transport=self._transport, timeout=self.timeout_s,
                              follow_redirects=False) as client:
                response = client.request("HEAD", url)
        except httpx.TimeoutException:
            return EndpointAnswer(False, False, detail=f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return EndpointAnswer(False, False, detail=_probe_error(exc))
        return EndpointAnswer(True, tls, response.status_code,
                              _http_date(response.headers.get("date")))


def _probe_error(exc: httpx.HTTPError) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
        return f"the TLS certificate was refused ({text[:160]})"
    return f"{type(exc).__name__}: {text[:160]}"


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
