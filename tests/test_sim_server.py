"""The simulated OAuth server, over real HTTP on 127.0.0.1 (stdlib client, not the refresher)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import CLAUDE_CLIENT_ID, CLAUDE_SCOPE
from agent.credential import fingerprint_of
from agent.sim.faults import Fault
from agent.sim.server import OAuthServer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration  # every test here talks HTTP to a real server

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Answer:
    def __init__(self, status: int, body: bytes, headers: Message[str, str]) -> None:
        self.status = status
        self.raw = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.raw)


def send(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> Answer:
    request = urllib.request.Request(url, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Answer(response.status, response.read(), response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, exc.read(), exc.headers)


def claude_refresh(server: OAuthServer, token: str, **extra: str) -> Answer:
    payload = {"grant_type": "refresh_token", "refresh_token": token,
               "client_id": CLAUDE_CLIENT_ID, "scope": CLAUDE_SCOPE, **extra}
    return send(server.url, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def form_refresh(server: OAuthServer, fields: dict[str, str],
                 basic: tuple[str, str] | None = None) -> Answer:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if basic is not None:
        pair = f"{urllib.parse.quote_plus(basic[0])}:{urllib.parse.quote_plus(basic[1])}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return send(server.url, urllib.parse.urlencode(fields).encode(), headers)


def api_check(server: OAuthServer, access_token: str) -> int:
    return send(server.check_url, headers={"Authorization": f"Bearer {access_token}"}).status


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=3600, clock=clock) as srv:
        yield srv


# -- rotation and revocation --------------------------------------------------------------

def test_login_has_the_cli_shape(server: OAuthServer, clock: FakeClock) -> None:
    login = server.issue_login()
    assert login["expiresAt"] == round((clock.now() + 3600) * 1000)
    assert login["scopes"] == CLAUDE_SCOPE.split()
    assert login["subscriptionType"] == "max"
    assert login["accessToken"] != login["refreshToken"]
    assert "refreshTokenExpiresAt" not in login
    assert api_check(server, login["accessToken"]) == 200


def test_a_refresh_rotates_both_tokens(server: OAuthServer) -> None:
    login = server.issue_login()
    answer = claude_refresh(server, login["refreshToken"])
    assert answer.status == 200
    body = answer.json()
    assert body["expires_in"] == 3600
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"] not in (login["refreshToken"], "")
    assert body["access_token"] != login["accessToken"]
    assert api_check(server, body["access_token"]) == 200
    assert server.family_of(body["refresh_token"]) == server.family_of(login["refreshToken"])
    assert server.stats().rotations == 1


def test_reuse_revokes_the_whole_family(server: OAuthServer) -> None:
    login = server.issue_login()
    other = server.issue_login()
    first = claude_refresh(server, login["refreshToken"]).json()
    reuse = claude_refresh(server, login["refreshToken"])
    assert reuse.status == 400
    assert reuse.json()["error"] == "invalid_grant"
    # Every token of the family is dead, the newest included ...
    assert claude_refresh(server, first["refresh_token"]).json()["error"] == "invalid_grant"
    assert api_check(server, first["access_token"]) == 401
    assert api_check(server, login["accessToken"]) == 401
    # ... and no other family is touched.
    assert api_check(server, other["accessToken"]) == 200
    assert claude_refresh(server, other["refreshToken"]).status == 200
    stats = server.stats()
    assert (stats.revoked_families, stats.invalid_grants, stats.rotations) == (1, 2, 2)


def test_concurrent_redemptions_of_one_token_let_exactly_one_through(
        server: OAuthServer) -> None:
    token = server.issue_login()["refreshToken"]
    statuses: list[int] = []
    guard = threading.Lock()

    def redeem() -> None:
        status = claude_refresh(server, token).status
        with guard:
            statuses.append(status)

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(statuses) == [200] + [400] * 7
    assert server.stats().revoked_families == 1


def test_unknown_token_is_invalid_grant_without_revoking_anything(server: OAuthServer) -> None:
    answer = claude_refresh(server, "sim-rt-never-issued")
    assert answer.json()["error"] == "invalid_grant"
    assert server.stats().revoked_families == 0


def test_expiry_follows_the_injected_clock(clock: FakeClock) -> None:
    with OAuthServer(access_lifetime_s=100, refresh_lifetime_s=1000, clock=clock) as server:
        login = server.issue_login()
        assert login["refreshTokenExpiresAt"] == round((clock.now() + 1000) * 1000)
        clock.advance(99)
        assert api_check(server, login["accessToken"]) == 200
        clock.advance(1)
        assert api_check(server, login["accessToken"]) == 401
        body = claude_refresh(server, login["refreshToken"]).json()
        assert body["refresh_token_expires_in"] == 1000
        clock.advance(1000)
        expired = claude_refresh(server, body["refresh_token"]).json()
        assert expired["error"] == "invalid_grant"
        assert "expired" in expired["error_description"]
        assert server.stats().revoked_families == 0


def test_lifetimes_can_change_at_runtime(server: OAuthServer) -> None:
    server.set_lifetimes(30, 90)
    body = claude_refresh(server, server.issue_login()["refreshToken"]).json()
    assert (body["expires_in"], body["refresh_token_expires_in"]) == (30, 90)


def test_a_non_rotating_server_returns_no_refresh_token(clock: FakeClock) -> None:
    with OAuthServer(rotate=False, clock=clock) as server:
        token = server.issue_login()["refreshToken"]
        for _ in range(2):
            answer = claude_refresh(server, token)
            assert answer.status == 200
            assert "refresh_token" not in answer.json()


def test_a_server_that_revokes_old_access_tokens_at_rotation(clock: FakeClock) -> None:
    with OAuthServer(clock=clock, revoke_old_access=True) as strict, \
            OAuthServer(clock=clock) as lenient:
        for server, old_still_works in ((strict, False), (lenient, True)):
            login = server.issue_login()
            answer = claude_refresh(server, login["refreshToken"])
            assert answer.status == 200
            assert server.check_access(answer.json()["access_token"])
            assert server.check_access(login["accessToken"]) is old_still_works


# -- request styles and client authentication ---------------------------------------------

def test_oauth2_style_with_http_basic(clock: FakeClock) -> None:
    with OAuthServer(client_id="app", client_secret="s3:cr t", clock=clock) as server:
        fields = {"grant_type": "refresh_token",
                  "refresh_token": server.issue_login()["refreshToken"]}
        assert form_refresh(server, fields).status == 401
        wrong = form_refresh(server, fields, basic=("app", "nope"))
        assert (wrong.status, wrong.json()["error"]) == (401, "invalid_client")
        assert wrong.headers["WWW-Authenticate"].startswith("Basic")
        assert form_refresh(server, fields, basic=("app", "s3:cr t")).status == 200
        assert [r.style for r in server.log()] == ["oauth2"] * 3


def test_oauth2_style_public_client(clock: FakeClock) -> None:
    with OAuthServer(client_id="app", clock=clock) as server:
        token = server.issue_login()["refreshToken"]
        answer = form_refresh(server, {"grant_type": "refresh_token", "refresh_token": token,
                                       "client_id": "app", "scope": "user:profile"})
        assert answer.status == 200
        assert server.log()[0].style == "oauth2"


@pytest.mark.parametrize(("extra", "status", "error"), [
    ({"client_id": "someone-else"}, 401, "invalid_client"),
    ({"grant_type": "password"}, 400, "unsupported_grant_type"),
    ({"scope": "user:profile admin:everything"}, 400, "invalid_scope"),
    ({"refresh_token": ""}, 400, "invalid_request"),
])
def test_bad_requests_are_refused_without_rotating(
        server: OAuthServer, extra: dict[str, str], status: int, error: str) -> None:
    token = server.issue_login()["refreshToken"]
    answer = claude_refresh(server, token, **extra)
    assert (answer.status, answer.json()["error"]) == (status, error)
    assert claude_refresh(server, token).status == 200  # the token was not spent


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b"{not json"),
    ("application/json", b'["a list"]'),
    ("text/plain", b"grant_type=refresh_token"),
    ("application/x-www-form-urlencoded", b"refresh_token=a&refresh_token=b"),
])
def test_unparsable_bodies_are_invalid_request(
        server: OAuthServer, content_type: str, body: bytes) -> None:
    answer = send(server.url, body, {"Content-Type": content_type})
    assert (answer.status, answer.json()["error"]) == (400, "invalid_request")
    assert server.log()[-1].style == "-"


def test_unknown_path_is_404(server: OAuthServer) -> None:
    assert send(server.base_url + "/nope").status == 404


# -- failure injection -------------------------------------------------------------------

def test_status_faults_count_down_then_service_resumes(server: OAuthServer) -> None:
    token = server.issue_login()["refreshToken"]
    server.inject_status(503, count=2)
    server.inject_status(429, retry_after="7")
    assert [claude_refresh(server, token).status for _ in range(3)] == [503, 503, 429]
    assert server.log()[-1].outcome == "fault:429"
    assert claude_refresh(server, token).status == 200  # faults rotated nothing
    assert server.stats().token_requests == 4


def test_429_carries_retry_after(server: OAuthServer) -> None:
    server.inject_status(429, retry_after="7")
    answer = claude_refresh(server, server.issue_login()["refreshToken"])
    assert (answer.status, answer.headers["Retry-After"]) == (429, "7")
    assert answer.json()["error"] == "rate_limit_exceeded"


def test_drop_closes_the_connection_and_rotates_nothing(server: OAuthServer) -> None:
    token = server.issue_login()["refreshToken"]
    server.inject_drop()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        claude_refresh(server, token)
    assert server.log()[-1].outcome == "dropped"
    assert claude_refresh(server, token).status == 200


def test_lost_response_rotates_then_closes(server: OAuthServer) -> None:
    token = server.issue_login()["refreshToken"]
    server.inject_lost()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        claude_refresh(server, token)
    assert server.stats().rotations == 1
    # The client never saw the new pair; presenting the old token again is reuse.
    assert claude_refresh(server, token).json()["error"] == "invalid_grant"
    assert server.stats().revoked_families == 1


def test_garbage_body_rotates_nothing(server: OAuthServer) -> None:
    token = server.issue_login()["refreshToken"]
    server.inject_garbage()
    answer = claude_refresh(server, token)
    assert answer.status == 200
    with pytest.raises(ValueError):
        answer.json()
    assert claude_refresh(server, token).status == 200


def test_delay_then_normal_answer(server: OAuthServer) -> None:
    server.inject_delay(0.3)
    started = time.monotonic()
    answer = claude_refresh(server, server.issue_login()["refreshToken"])
    assert answer.status == 200
    assert time.monotonic() - started >= 0.3


def test_a_client_that_times_out_during_a_delay_loses_the_rotation(server: OAuthServer) -> None:
    token = server.issue_login()["refreshToken"]
    server.inject_delay(0.5)
    with pytest.raises(OSError):  # socket timeout (TimeoutError or URLError wrapping it)
        send(server.url, json.dumps({"grant_type": "refresh_token", "refresh_token": token,
                                     "client_id": CLAUDE_CLIENT_ID}).encode(),
             {"Content-Type": "application/json"}, timeout=0.1)
    deadline = time.monotonic() + 5
    while server.stats().rotations == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # poll for the handler thread to finish its delayed work
    assert server.stats().rotations == 1


def test_stop_interrupts_a_delay_and_leaves_no_thread(clock: FakeClock) -> None:
    server = OAuthServer(clock=clock).start()
    token = server.issue_login()["refreshToken"]
    server.inject_delay(60)
    caught: list[BaseException] = []

    def client() -> None:
        try:
            claude_refresh(server, token)
        except (OSError, http.client.HTTPException) as exc:
            caught.append(exc)

    worker = threading.Thread(target=client)
    worker.start()
    deadline = time.monotonic() + 5
    while server.stats().token_requests == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    worker.join(timeout=5)
    assert time.monotonic() - started < 3
    assert len(caught) == 1  # dropped, not answered after stop
    assert server.stats().rotations == 0
    assert not [t for t in threading.enumerate() if t.name == "sim-oauth-server"]


def test_faults_can_be_queued_from_many_threads(server: OAuthServer) -> None:
    threads = [threading.Thread(target=server.inject_drop, args=(25,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert server.faults.pending() == 200
    server.clear_faults()
    assert server.faults.pending() == 0


def test_bad_faults_are_refused() -> None:
    with pytest.raises(ValueError):
        Fault.from_json({"kind": "explode"})
    with pytest.raises(ValueError):
        OAuthServer().inject(Fault("status", status=42))


# -- the request log ---------------------------------------------------------------------

def test_request_log_records_fingerprints_never_tokens(server: OAuthServer,
                                                      clock: FakeClock) -> None:
    login = server.issue_login()
    claude_refresh(server, login["refreshToken"])
    clock.advance(5)
    claude_refresh(server, login["refreshToken"])
    log = server.log()
    assert [(r.outcome, r.status) for r in log] == [("rotated", 200), ("invalid_grant", 400)]
    assert log[1].time - log[0].time == 5
    assert {r.fingerprint for r in log} == {fingerprint_of(login["refreshToken"])}
    assert login["refreshToken"] not in repr(log)


# -- admin endpoints and the process form ------------------------------------------------

def test_admin_endpoints_drive_a_server_from_outside(server: OAuthServer) -> None:
    login = send(server.base_url + "/_sim/login", b"").json()
    fault = send(server.base_url + "/_sim/fault",
                 json.dumps({"kind": "status", "status": 502, "count": 2}).encode())
    assert fault.json() == {"pending": 2}
    assert claude_refresh(server, login["refreshToken"]).status == 502
    send(server.base_url + "/_sim/clear-faults", b"")
    assert claude_refresh(server, login["refreshToken"]).status == 200
    stats = send(server.base_url + "/_sim/stats").json()
    assert stats["stats"]["rotations"] == 1
    assert [r["outcome"] for r in stats["log"]] == ["fault:502", "rotated"]
    assert send(server.base_url + "/_sim/fault", b'{"kind": "nope"}').status == 400


def _first_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "the server printed nothing in time"
    return proc.stdout.readline().strip()


def test_runs_as_a_process_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.sim.server", "--port", "0", "--lifetime", "5"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        url = _first_line(proc, 15)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1/oauth/token")
        base = url.removesuffix("/v1/oauth/token")
        login = send(base + "/_sim/login", b"").json()
        payload = {"grant_type": "refresh_token", "refresh_token": login["refreshToken"],
                   "client_id": CLAUDE_CLIENT_ID}
        answer = send(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        assert (answer.status, answer.json()["expires_in"]) == (200, 5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        assert proc.stderr.read() == ""
        proc.stderr.close()
