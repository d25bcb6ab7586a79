"""CodexRefresher against a stub of OpenAI's token endpoint on 127.0.0.1 (stdlib http.server in a
thread), answering in the shapes Codex's own source parses (``request_chatgpt_token_refresh``,
``persist_tokens``, ``classify_refresh_token_failure`` in codex-rs/login/src/auth/manager.rs):
the exact request, absent answer fields kept, the expiry from the new access JWT, each refusal
final or transient as Codex decides, and no token in any message. The simulated server's Codex
mode (agent/sim/server.py) will carry the contract suite; this file needs nothing of it."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.codex import tokens
from agent.codex.refresher import CodexRefresher
from agent.config import CODEX_CLIENT_ID, CODEX_TOKEN_URL, CodexSection, RefreshSection
from agent.credential import Credential
from agent.errors import InvalidGrantError, RefreshError, TransientRefreshError
from agent.refresh.coordinator import Refresher
from agent.refresh.http import GrantRejected, HttpRefresher

NOW = 1_800_000_000.0
AUTH = tokens.AUTH_CLAIMS


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT: base64url JSON header and payload, a dummy signature."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def access_jwt(exp: float, iat: float | None = None, tag: str = "a") -> str:
    claims: dict[str, Any] = {"exp": int(exp), "jti": f"access-{tag}"}
    if iat is not None:
        claims["iat"] = int(iat)
    return jwt(claims)


def id_jwt(account: str = "acct-1", user: str = "user-1", tag: str = "i") -> str:
    return jwt({"email": "me@example.com", "jti": f"id-{tag}",
                AUTH: {"chatgpt_account_id": account, "chatgpt_user_id": user}})


OLD_ACCESS = access_jwt(NOW + 600, NOW - 3000, "old")
OLD_ID = id_jwt(tag="old")
OLD_REFRESH = "rt-old-0123456789"


def old_login(**extra: Any) -> Credential:
    doc = {"OPENAI_API_KEY": None, "last_refresh": "2027-01-01T00:00:00.000000Z",
           "tokens": {"id_token": OLD_ID, "access_token": OLD_ACCESS,
                      "refresh_token": OLD_REFRESH, "account_id": "acct-1"}}
    cred = tokens.credential_from_auth(doc)
    assert cred is not None
    return Credential({**cred.oauth, **extra})


# -- the stub endpoint --------------------------------------------------------------------------

@dataclass
class Answer:
    status: int = 200
    body: Any = None  # a JSON value, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # read the request, then close without an answer


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Stub:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.seen: list[Seen] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                stub.seen.append(Seen("POST", self.path,
                                      {k.lower(): v for k, v in self.headers.items()},
                                      self.rfile.read(length)))
                answer = stub.answers.pop(0) if stub.answers else Answer(500, {})
                time.sleep(answer.delay_s)
                if answer.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                raw = answer.body if isinstance(answer.body, bytes) else \
                    json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def refresher(stub: Stub, clock: FakeClock) -> Iterator[CodexRefresher]:
    with CodexRefresher(stub.url, CODEX_CLIENT_ID, 2.0, clock=clock) as r:
        yield r


def answer(stub: Stub, status: int = 200, body: Any = None, **kw: Any) -> None:
    stub.answers.append(Answer(status, body, **kw))


def assert_no_token(exc: BaseException, *creds: Credential) -> None:
    text = f"{exc} {exc!r} {exc.args!r} {exc.__cause__!r}"
    for cred in creds:
        for key in ("accessToken", "refreshToken", "idToken"):
            secret = cred.oauth.get(key)
            if secret:
                assert secret not in text, key


# -- the request ------------------------------------------------------------------------------

def test_the_request_is_codexs(stub: Stub, refresher: CodexRefresher) -> None:
    answer(stub, body={"access_token": access_jwt(NOW + 3600, NOW)})
    refresher.refresh(old_login())
    (seen,) = stub.seen
    assert (seen.method, seen.path) == ("POST", "/oauth/token")
    assert seen.headers["content-type"] == "application/json"
    assert json.loads(seen.body) == {"client_id": CODEX_CLIENT_ID, "grant_type": "refresh_token",
                                     "refresh_token": OLD_REFRESH,
                                     "refresh_reason": "proactive_expiry"}
    assert "authorization" not in seen.headers


def test_refresh_reason_can_be_left_out(stub: Stub, clock: FakeClock) -> None:
    answer(stub, body={"access_token": access_jwt(NOW + 3600, NOW)})
    with CodexRefresher(stub.url, "app_x", 2.0, clock=clock, refresh_reason=None) as r:
        r.refresh(old_login())
    assert json.loads(stub.seen[0].body) == {"client_id": "app_x", "grant_type": "refresh_token",
                                             "refresh_token": OLD_REFRESH}


def test_built_from_the_codex_and_refresh_sections(stub: Stub, clock: FakeClock) -> None:
    section = CodexSection(homes=[], token_url=stub.url, client_id="app_y")
    r = CodexRefresher.from_sections(section, RefreshSection(timeout_s=3), clock)
    assert (r.token_url, r.client_id, r.timeout_s) == (stub.url, "app_y", 3)
    r.close()
    default = CodexSection(homes=[])
    assert (default.token_url, default.client_id) == (CODEX_TOKEN_URL, CODEX_CLIENT_ID)
    refresher: Refresher = CodexRefresher.from_sections(default, RefreshSection())
    assert isinstance(refresher, HttpRefresher)


def test_the_base_refuses_the_codex_style() -> None:
    with pytest.raises(ValueError, match="CodexRefresher"):
        HttpRefresher("https://h.invalid/t", "c", "", "codex", 1.0)


def test_a_login_without_refresh_token_sends_nothing(stub: Stub,
                                                     refresher: CodexRefresher) -> None:
    with pytest.raises(InvalidGrantError):
        refresher.refresh(old_login(refreshToken=""))
    assert stub.seen == []


# -- the answer -------------------------------------------------------------------------------

def test_a_full_answer(stub: Stub, refresher: CodexRefresher, clock: FakeClock) -> None:
    clock.advance(5)  # the answer's now, for last_refresh
    new_access, new_id = access_jwt(NOW + 86400, NOW, "new"), id_jwt(tag="new")
    answer(stub, body={"id_token": new_id, "access_token": new_access,
                       "refresh_token": "rt-new-1"})
    result = refresher.refresh(old_login(someFutureKey={"kept": True}))
    cred = result.credential
    assert (cred.access_token, cred.refresh_token, cred.oauth["idToken"]) == \
        (new_access, "rt-new-1", new_id)
    assert cred.expires_at_ms == int(NOW + 86400) * 1000
    assert cred.oauth["issuedAt"] == int(NOW) * 1000
    assert result.expires_in == 86400  # exp - iat
    assert cred.oauth["lastRefresh"] == tokens.format_time(NOW + 5)
    assert (cred.oauth["accountId"], cred.oauth["userId"]) == ("acct-1", "user-1")
    assert cred.oauth["someFutureKey"] == {"kept": True}
    # One decoding path: the result is what tokens.py reads from the document it would write.
    again = tokens.credential_from_auth(tokens.auth_with(None, cred))
    assert again is not None and dict(again.oauth) == \
        {k: v for k, v in cred.oauth.items() if k != "someFutureKey"}


@pytest.mark.parametrize("body", [
    {"access_token": "ACCESS"},
    {"access_token": "ACCESS", "refresh_token": None, "id_token": None},
])
def test_absent_fields_keep_their_old_values(stub: Stub, refresher: CodexRefresher,
                                             body: dict[str, Any]) -> None:
    new_access = access_jwt(NOW + 3600, NOW, "n")
    answer(stub, body={k: (new_access if v == "ACCESS" else v) for k, v in body.items()})
    cred = refresher.refresh(old_login()).credential
    assert (cred.access_token, cred.refresh_token, cred.oauth["idToken"]) == \
        (new_access, OLD_REFRESH, OLD_ID)
    assert cred.expires_at_ms == int(NOW + 3600) * 1000


def test_a_new_refresh_token_alone_keeps_the_old_access_token(stub: Stub,
                                                              refresher: CodexRefresher) -> None:
    answer(stub, body={"refresh_token": "rt-new-2"})
    result = refresher.refresh(old_login())
    cred = result.credential
    assert (cred.access_token, cred.refresh_token) == (OLD_ACCESS, "rt-new-2")
    assert cred.expires_at_ms == int(NOW + 600) * 1000
    assert result.expires_in == 3600  # the old token's exp - iat


def test_without_iat_the_lifetime_is_what_is_left(stub: Stub, refresher: CodexRefresher) -> None:
    answer(stub, body={"access_token": access_jwt(NOW + 1800)})
    result = refresher.refresh(old_login())
    assert result.expires_in == 1800
    assert "issuedAt" not in result.credential.oauth


def test_an_opaque_access_token_lives_eight_days(stub: Stub, refresher: CodexRefresher) -> None:
    answer(stub, body={"access_token": "opaque-access-token"})
    result = refresher.refresh(old_login())
    assert result.credential.expires_at == NOW + tokens.OPAQUE_LIFETIME_S
    assert result.expires_in == tokens.OPAQUE_LIFETIME_S


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", {}, {"id_token": id_jwt()}, {"access_token": 5},
    {"access_token": ""}, {"refresh_token": ["x"]},
])
def test_an_unusable_success_is_transient_and_may_have_rotated(
        stub: Stub, refresher: CodexRefresher, body: Any) -> None:
    answer(stub, body=body)
    with pytest.raises(TransientRefreshError) as caught:
        refresher.refresh(old_login())
    assert caught.value.may_have_rotated


# -- refusals ---------------------------------------------------------------------------------

def openai_error(code: str, message: str = "Your refresh token has already been used.") -> Any:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": code}}


@pytest.mark.parametrize(("status", "body", "code"), [
    (401, openai_error("refresh_token_reused"), "refresh_token_reused"),
    (401, openai_error("refresh_token_expired"), "refresh_token_expired"),
    (401, openai_error("refresh_token_invalidated"), "refresh_token_invalidated"),
    (400, openai_error("REFRESH_TOKEN_REUSED"), "refresh_token_reused"),  # any status, any case
    (403, {"error": "refresh_token_expired"}, "refresh_token_expired"),
    (400, {"code": "refresh_token_invalidated"}, "refresh_token_invalidated"),
    (400, {"error": "invalid_grant", "error_description": "bad"}, "invalid_grant"),
    (401, b"<html>unauthorized</html>", "http_401"),  # any 401
    (401, {"error": {"code": "something_else"}}, "something_else"),
])
def test_final_refusals_are_invalid_grant_and_not_retried(
        stub: Stub, refresher: CodexRefresher, status: int, body: Any, code: str) -> None:
    answer(stub, status, body)
    answer(stub, 200, {"access_token": access_jwt(NOW + 3600, NOW)})  # never asked for
    with pytest.raises(GrantRejected) as caught:
        refresher.refresh(old_login())
    assert (caught.value.error_code, caught.value.status_code) == (code, status)
    assert isinstance(caught.value, InvalidGrantError)
    assert len(stub.seen) == 1


def test_the_servers_message_is_shown_with_tokens_scrubbed(stub: Stub,
                                                           refresher: CodexRefresher) -> None:
    cred = old_login()
    answer(stub, 401, openai_error("refresh_token_reused",
                                   f"token {OLD_REFRESH} used\n(access {OLD_ACCESS})"))
    with pytest.raises(InvalidGrantError) as caught:
        refresher.refresh(cred)
    text = str(caught.value)
    assert "refresh_token_reused" in text and "used" in text and "\n" not in text
    assert_no_token(caught.value, cred)


@pytest.mark.parametrize(("status", "body"), [
    (500, openai_error("server_error", "oops")),
    (502, b"<html>bad gateway</html>"),
    (503, {}),
    (429, {"error": {"code": "rate_limit_exceeded"}}),
    (400, {"error": "invalid_request"}),  # not a code Codex treats as final
    (403, b"<html>waf</html>"),
])
def test_other_refusals_are_transient(stub: Stub, refresher: CodexRefresher, status: int,
                                      body: Any) -> None:
    answer(stub, status, body, headers={"Retry-After": "7"} if status == 429 else {})
    with pytest.raises(TransientRefreshError) as caught:
        refresher.refresh(old_login())
    assert not caught.value.may_have_rotated
    assert caught.value.retry_after_s == (7 if status == 429 else None)


def test_a_timeout_is_transient_and_may_have_rotated(stub: Stub, clock: FakeClock) -> None:
    answer(stub, body={"access_token": access_jwt(NOW + 3600, NOW)}, delay_s=1.5)
    with CodexRefresher(stub.url, CODEX_CLIENT_ID, 0.3, clock=clock) as r, \
            pytest.raises(TransientRefreshError) as caught:
        r.refresh(old_login())
    assert caught.value.may_have_rotated and "timed out" in str(caught.value)


def test_a_dropped_answer_is_transient_and_may_have_rotated(stub: Stub,
                                                            refresher: CodexRefresher) -> None:
    answer(stub, drop=True)
    with pytest.raises(TransientRefreshError) as caught:
        refresher.refresh(old_login())
    assert caught.value.may_have_rotated


def test_an_unreachable_endpoint_is_transient_and_spends_nothing(clock: FakeClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with CodexRefresher(f"http://127.0.0.1:{port}/oauth/token", CODEX_CLIENT_ID, 1.0,
                        clock=clock) as r, pytest.raises(TransientRefreshError) as caught:
        r.refresh(old_login())
    assert not caught.value.may_have_rotated and "unreachable" in str(caught.value)


@pytest.mark.parametrize("answered", [
    Answer(401, openai_error("refresh_token_reused", f"{OLD_REFRESH} {OLD_ACCESS} {OLD_ID}")),
    Answer(500, {"error": {"code": "x", "message": OLD_REFRESH}, "echo": OLD_ACCESS}),
    Answer(400, {"error": OLD_REFRESH}),  # a "code" that is a token is not shown
    Answer(200, {"access_token": 5, "echo": OLD_REFRESH}),
    Answer(200, b"not json " + OLD_REFRESH.encode()),
    Answer(drop=True),
])
def test_no_exception_holds_a_token(stub: Stub, refresher: CodexRefresher,
                                    answered: Answer) -> None:
    stub.answers.append(answered)
    cred = old_login()
    with pytest.raises(RefreshError) as caught:
        refresher.refresh(cred)
    assert_no_token(caught.value, cred)
