"""HttpRefresher against the real simulated server (every error class), a few MockTransport unit
tests for what the server cannot be made to say, and the Backoff helper's properties."""

from __future__ import annotations

import base64
import json
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.config import CLAUDE_CLIENT_ID, CLAUDE_SCOPE, RefreshSection
from agent.credential import Credential
from agent.errors import InvalidGrantError, TransientRefreshError
from agent.refresh.http import Backoff, GrantRejected, HttpRefresher, parse_retry_after
from agent.sim.server import OAuthServer

TIMEOUT_S = 2.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=3600, refresh_lifetime_s=30 * 86400, clock=clock) as srv:
        yield srv


def claude_refresher(server: OAuthServer, clock: FakeClock,
                     timeout_s: float = TIMEOUT_S) -> HttpRefresher:
    return HttpRefresher(server.url, CLAUDE_CLIENT_ID, CLAUDE_SCOPE, "claude", timeout_s,
                         clock=clock)


def login(server: OAuthServer, **extra: object) -> Credential:
    return Credential({**server.issue_login(), **extra})


def assert_no_token(exc: BaseException, cred: Credential) -> None:
    text = f"{exc} {exc!r} {exc.args!r}"
    assert cred.refresh_token not in text
    assert cred.access_token not in text


# -- against the real server --------------------------------------------------------------

@pytest.mark.integration
def test_claude_style_refresh(server: OAuthServer, clock: FakeClock) -> None:
    old = login(server, accountUuid="acct-1")
    clock.advance(10)
    with claude_refresher(server, clock) as refresher:
        result = refresher.refresh(old)
    new = result.credential
    assert result.expires_in == 3600
    assert new.expires_at_ms == round((clock.now() + 3600) * 1000)
    assert new.refresh_token_expires_at == clock.now() + 30 * 86400
    assert new.refresh_token != old.refresh_token
    assert new.access_token != old.access_token
    assert new.oauth["accountUuid"] == "acct-1"  # every key of the old login is kept
    assert new.oauth["subscriptionType"] == "max"
    assert server.check_access(new.access_token)
    assert [(r.style, r.outcome) for r in server.log()] == [("claude", "rotated")]


@pytest.mark.integration
def test_oauth2_style_with_client_secret(clock: FakeClock) -> None:
    with OAuthServer(client_id="app", client_secret="p@ss:word", scope="read write",
                     clock=clock) as server:
        good = HttpRefresher(server.url, "app", "read", "oauth2", TIMEOUT_S,
                             client_secret="p@ss:word", clock=clock)
        bad = HttpRefresher(server.url, "app", "read", "oauth2", TIMEOUT_S,
                            client_secret="guess", clock=clock)
        cred = login(server)
        with good, bad:
            with pytest.raises(GrantRejected) as caught:
                bad.refresh(cred)
            result = good.refresh(cred)
    assert (caught.value.error_code, caught.value.status_code) == ("invalid_client", 401)
    assert result.credential.oauth["scopes"] == ["read", "write"]
    assert [(r.style, r.outcome) for r in server.log()] == [("oauth2", "invalid_client"),
                                                             ("oauth2", "rotated")]


@pytest.mark.integration
def test_oauth2_style_public_client(clock: FakeClock) -> None:
    with OAuthServer(client_id="app", clock=clock) as server, \
            HttpRefresher(server.url, "app", "", "oauth2", TIMEOUT_S, clock=clock) as refresher:
        assert refresher.refresh(login(server)).expires_in == 8 * 3600


@pytest.mark.integration
def test_reuse_is_invalid_grant_and_names_no_token(server: OAuthServer,
                                                   clock: FakeClock) -> None:
    cred = login(server)
    with claude_refresher(server, clock) as refresher:
        refresher.refresh(cred)
        with pytest.raises(InvalidGrantError) as caught:
            refresher.refresh(cred)
    assert isinstance(caught.value, GrantRejected)
    assert (caught.value.error_code, caught.value.status_code) == ("invalid_grant", 400)
    assert "invalid_grant" in str(caught.value)
    assert_no_token(caught.value, cred)


@pytest.mark.integration
def test_wrong_scope_is_terminal(server: OAuthServer, clock: FakeClock) -> None:
    with HttpRefresher(server.url, CLAUDE_CLIENT_ID, "user:profile admin:all", "claude",
                       TIMEOUT_S, clock=clock) as refresher, \
            pytest.raises(GrantRejected) as caught:
        refresher.refresh(login(server))
    assert caught.value.error_code == "invalid_scope"


@pytest.mark.integration
@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(server: OAuthServer, clock: FakeClock, status: int) -> None:
    cred = login(server)
    server.inject_status(status)
    with claude_refresher(server, clock) as refresher:
        with pytest.raises(TransientRefreshError) as caught:
            refresher.refresh(cred)
        assert caught.value.retry_after_s is None
        assert str(status) in str(caught.value)
        assert refresher.refresh(cred).credential.access_token  # nothing was spent


@pytest.mark.integration
def test_429_honours_retry_after(server: OAuthServer, clock: FakeClock) -> None:
    cred = login(server)
    server.inject_status(429, retry_after="7")
    with claude_refresher(server, clock) as refresher, \
            pytest.raises(TransientRefreshError) as caught:
        refresher.refresh(cred)
    assert not isinstance(caught.value, InvalidGrantError)
    assert caught.value.retry_after_s == 7.0
    assert_no_token(caught.value, cred)


@pytest.mark.integration
@pytest.mark.parametrize("inject", [OAuthServer.inject_drop, OAuthServer.inject_garbage])
def test_dropped_or_garbage_answers_are_transient(
        server: OAuthServer, clock: FakeClock, inject: Callable[[OAuthServer], None]) -> None:
    cred = login(server)
    inject(server)
    with claude_refresher(server, clock) as refresher:
        with pytest.raises(TransientRefreshError) as caught:
            refresher.refresh(cred)
        assert_no_token(caught.value, cred)
        assert refresher.refresh(cred).credential.access_token


@pytest.mark.integration
def test_a_lost_answer_is_transient_and_the_token_is_spent(
        server: OAuthServer, clock: FakeClock) -> None:
    cred = login(server)
    server.inject_lost()
    with claude_refresher(server, clock) as refresher:
        with pytest.raises(TransientRefreshError):
            refresher.refresh(cred)
        # Why the agent must never blindly retry with the same token: it is reuse now.
        with pytest.raises(InvalidGrantError):
            refresher.refresh(cred)
    assert server.stats().revoked_families == 1


@pytest.mark.integration
def test_timeout_is_transient(server: OAuthServer, clock: FakeClock) -> None:
    cred = login(server)
    server.inject_delay(5)
    with claude_refresher(server, clock, timeout_s=0.2) as refresher, \
            pytest.raises(TransientRefreshError) as caught:
        refresher.refresh(cred)
    assert "timed out" in str(caught.value)


@pytest.mark.integration
def test_connection_refused_is_transient(clock: FakeClock) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/oauth/token"
    with HttpRefresher(url, CLAUDE_CLIENT_ID, CLAUDE_SCOPE, "claude", TIMEOUT_S,
                       clock=clock) as refresher, pytest.raises(TransientRefreshError) as caught:
        refresher.refresh(Credential.build("at", "rt", 1))
    assert "unreachable" in str(caught.value)


@pytest.mark.integration
def test_a_non_rotating_server_leaves_the_refresh_token(clock: FakeClock) -> None:
    with OAuthServer(rotate=False, clock=clock) as server, \
            claude_refresher(server, clock) as refresher:
        cred = login(server)
        first = refresher.refresh(cred).credential
        second = refresher.refresh(first).credential
    assert first.refresh_token == second.refresh_token == cred.refresh_token
    assert second.access_token != first.access_token


# -- MockTransport unit tests ------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def mock_refresher(handler: Handler, clock: FakeClock, style: str = "claude",
                   secret: str | None = None) -> HttpRefresher:
    return HttpRefresher("https://auth.example/token", "cid", "a b",
                         "oauth2" if style == "oauth2" else "claude", 5.0,
                         client_secret=secret, clock=clock,
                         transport=httpx.MockTransport(handler))


OLD = Credential.build("old-access-token-xyz", "old-refresh-token-xyz", 1,
                       scopes=["a"], rateLimitTier="tier")


def test_claude_body_is_the_clis(clock: FakeClock) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "new-at", "refresh_token": "new-rt",
                                         "expires_in": 60})

    mock_refresher(handler, clock).refresh(OLD)
    assert seen[0].headers["content-type"] == "application/json"
    assert json.loads(seen[0].content) == {"grant_type": "refresh_token",
                                           "refresh_token": "old-refresh-token-xyz",
                                           "client_id": "cid", "scope": "a b"}


def test_oauth2_form_and_basic_encoding(clock: FakeClock) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "new-at", "expires_in": 60})

    mock_refresher(handler, clock, "oauth2", secret="s e:c").refresh(OLD)
    form = dict(urllib.parse.parse_qsl(seen[0].content.decode()))
    assert form == {"grant_type": "refresh_token", "refresh_token": "old-refresh-token-xyz",
                    "scope": "a b"}
    assert "client_id" not in form
    basic = base64.b64decode(seen[0].headers["authorization"].split()[1]).decode()
    assert basic == "cid:s+e%3Ac"  # RFC 6749 s.2.3.1: form-encoded before base64


def test_missing_refresh_token_keeps_the_old_one(clock: FakeClock) -> None:
    result = mock_refresher(
        lambda r: httpx.Response(200, json={"access_token": "new-at", "expires_in": 90,
                                            "scope": "x y"}), clock).refresh(OLD)
    cred = result.credential
    assert cred.refresh_token == "old-refresh-token-xyz"
    assert cred.access_token == "new-at"
    assert cred.expires_at_ms == round((clock.now() + 90) * 1000)
    assert cred.oauth["scopes"] == ["x", "y"]
    assert cred.oauth["rateLimitTier"] == "tier"
    assert "refreshTokenExpiresAt" not in cred.oauth


@pytest.mark.parametrize("body", [
    {"expires_in": 60},
    {"access_token": "", "expires_in": 60},
    {"access_token": "at", "expires_in": -1},
    {"access_token": "at", "expires_in": True},
    {"access_token": "at", "expires_in": "60"},
    ["not", "an", "object"],
])
def test_unusable_success_bodies_are_transient(clock: FakeClock, body: object) -> None:
    refresher = mock_refresher(lambda r: httpx.Response(200, json=body), clock)
    with pytest.raises(TransientRefreshError):
        refresher.refresh(OLD)


@pytest.mark.parametrize(("status", "body"), [
    (403, None),  # a proxy or WAF page: not the server refusing the grant
    (404, {"error": "not_found"}),
    (401, None),
    (400, {"error": "slow_down"}),
    (408, {"error": "invalid_request"}),
    (302, None),  # never follow a redirect with a refresh token
])
def test_unrecognised_refusals_are_transient(clock: FakeClock, status: int,
                                             body: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, text="<html>nope</html>",
                                  headers={"Location": "https://elsewhere/"})
        return httpx.Response(status, json=body)

    with pytest.raises(TransientRefreshError):
        mock_refresher(handler, clock).refresh(OLD)


@pytest.mark.parametrize("status", [400, 401])
@pytest.mark.parametrize("code", ["invalid_grant", "invalid_client", "unauthorized_client"])
def test_terminal_refusals(clock: FakeClock, status: int, code: str) -> None:
    refresher = mock_refresher(lambda r: httpx.Response(status, json={"error": code}), clock)
    with pytest.raises(GrantRejected) as caught:
        refresher.refresh(OLD)
    assert (caught.value.error_code, caught.value.status_code) == (code, status)


def test_an_echoed_token_is_scrubbed_from_the_message(clock: FakeClock) -> None:
    description = "token old-refresh-token-xyz is revoked\n(and old-access-token-xyz)"
    refresher = mock_refresher(lambda r: httpx.Response(
        400, json={"error": "invalid_grant", "error_description": description}), clock)
    with pytest.raises(InvalidGrantError) as caught:
        refresher.refresh(OLD)
    assert_no_token(caught.value, OLD)
    assert "is revoked" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_http_date_retry_after(clock: FakeClock) -> None:
    when = datetime.fromtimestamp(clock.now() + 120, tz=timezone.utc)
    refresher = mock_refresher(lambda r: httpx.Response(
        503, headers={"Retry-After": format_datetime(when, usegmt=True)}), clock)
    with pytest.raises(TransientRefreshError) as caught:
        refresher.refresh(OLD)
    assert caught.value.retry_after_s == 120


def test_a_credential_without_refresh_token_sends_nothing(clock: FakeClock) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    with pytest.raises(InvalidGrantError):
        mock_refresher(handler, clock).refresh(Credential.build("at", "", 1))
    assert calls == []


def test_built_from_settings(clock: FakeClock) -> None:
    section = RefreshSection(token_url="http://127.0.0.1:1/t", style="oauth2", client_id="x",
                             scope="s", timeout_s=3)
    with HttpRefresher.from_settings(section, clock) as refresher:
        assert (refresher.token_url, refresher.style, refresher.client_id, refresher.scope,
                refresher.timeout_s) == ("http://127.0.0.1:1/t", "oauth2", "x", "s", 3)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("7", 7.0), (" 0 ", 0.0), ("soon", None), ("-5", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: retry now
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, 1_800_000_000.0) == expected


# -- Backoff ------------------------------------------------------------------------------

unit = st.floats(min_value=0.0, max_value=1.0)
attempts = st.integers(min_value=0, max_value=10_000)


@given(attempts, unit)
def test_backoff_stays_between_1_s_and_5_min(attempt: int, r: float) -> None:
    delay = Backoff(rand=lambda: r).delay(attempt)
    assert 1.0 <= delay <= 300.0
    assert delay <= Backoff().ceiling(attempt)


@given(attempts)
def test_backoff_ceiling_grows_then_caps(attempt: int) -> None:
    backoff = Backoff()
    assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1)
    assert backoff.ceiling(attempt) == min(300.0, 2.0 ** min(attempt, 64))


@given(attempts, unit, st.floats(min_value=0.001, max_value=1e9))
def test_retry_after_is_a_floor(attempt: int, r: float, retry_after: float) -> None:
    backoff = Backoff(rand=lambda: r)
    delay = backoff.delay(attempt, retry_after)
    assert delay >= min(retry_after, backoff.max_retry_after_s)
    assert delay >= backoff.delay(attempt)
    assert delay <= max(300.0, backoff.max_retry_after_s)


def test_backoff_jitter_spans_the_whole_range() -> None:
    assert Backoff(rand=lambda: 0.0).delay(5) == 1.0
    assert Backoff(rand=lambda: 1.0).delay(5) == 32.0
    assert Backoff(rand=lambda: 0.5).delay(0) == 1.0  # the first retry waits the minimum
    assert Backoff(rand=lambda: 1.0).delay(9) == 300.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(min_s=0)
    with pytest.raises(ValueError):
        Backoff(min_s=10, max_s=5)


@pytest.mark.integration
def test_messages_never_show_the_urls_password_query_or_fragment(server: OAuthServer,
                                                                  clock: FakeClock) -> None:
    # F13: a URL given in code (the config refuses userinfo) still never reaches a message.
    parts = urllib.parse.urlsplit(server.url)
    url = urllib.parse.urlunsplit((parts.scheme, f"u:PW@{parts.netloc}", parts.path,
                                   "k=S3CRET", "FRAG"))
    server.inject_status(503)
    with HttpRefresher(url, CLAUDE_CLIENT_ID, CLAUDE_SCOPE, "claude", TIMEOUT_S,
                       clock=clock) as refresher, pytest.raises(TransientRefreshError) as caught:
        refresher.refresh(login(server))
    text = str(caught.value)
    assert f"{parts.scheme}://{parts.netloc}{parts.path} answered 503" in text, text
    assert "PW" not in text and "S3CRET" not in text and "FRAG" not in text


def test_a_token_echoed_as_the_error_code_is_not_shown(clock: FakeClock) -> None:
    refresher = mock_refresher(lambda r: httpx.Response(
        400, json={"error": "old-refresh-token-xyz"}), clock)
    with pytest.raises(TransientRefreshError) as caught:
        refresher.refresh(OLD)
    assert_no_token(caught.value, OLD)
