"""The simulated Codex side: OpenAI's token endpoint as Codex meets it, a Codex CLI session, and
a world of them without credsync (notes/codex.md). Real HTTP on 127.0.0.1, real files and flocks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.codex.tokens import credential_from_auth, jwt_claims, parse_time
from agent.sim import jwt
from agent.sim.codex_session import CodexSession, Outcome, error_code
from agent.sim.codex_store import AUTH_JSON_LOCK, AUTH_LOCK, CodexStore, login_document
from agent.sim.codex_world import CodexWorldConfig, run_codex_world
from agent.sim.server import CODEX_CLIENT_ID, OAuthServer
from agent.sim.session import exchange

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
HOUR = 3600.0
DEADLINE_S = 10.0


def refresh(server: OAuthServer, token: str, client_id: str = CODEX_CLIENT_ID,
            ) -> tuple[int, dict[str, Any] | None]:
    payload = {"client_id": client_id, "grant_type": "refresh_token", "refresh_token": token,
               "refresh_reason": "proactive_expiry"}
    request = urllib.request.Request(server.url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
    return exchange(request, 5.0)


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    pause = threading.Event()
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s:g} s: {what}")
        pause.wait(0.005)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[OAuthServer]:
    with OAuthServer(style="codex", access_lifetime_s=HOUR, clock=clock) as srv:
        yield srv


def home_with(tmp_path: Path, name: str, tokens: dict[str, Any], now: float,
              extra: dict[str, Any] | None = None) -> Path:
    home = tmp_path / name
    home.mkdir()
    doc = {**login_document(tokens, now), **(extra or {})}
    (home / "auth.json").write_text(json.dumps(doc))
    os.chmod(home / "auth.json", 0o600)
    return home


def session(home: Path, server: OAuthServer, clock: FakeClock, **kw: Any) -> CodexSession:
    s = CodexSession(home, server.url, clock=clock, check=server.check_access, name=home.name,
                     http_timeout_s=5.0, **kw)
    s.start()
    return s


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


# -- JWTs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS256", "none"])
def test_jwts_decode_as_codex_reads_them(alg: jwt.Alg) -> None:
    access = jwt.access_token(exp=2000, iat=1000, account_id="acc", user_id="u", alg=alg)
    ident = jwt.id_token(iat=1000, account_id="acc", user_id="u", email="a@b.c",
                         plan_type="pro", alg=alg)
    header = json.loads(jwt.base64.urlsafe_b64decode(access.split(".")[0] + "=="))
    assert header == {"alg": alg, "typ": "JWT"} and len(access.split(".")) == 3
    claims = jwt_claims(access)
    assert claims is not None and (claims["exp"], claims["iat"]) == (2000, 1000)
    id_claims = jwt_claims(ident)
    assert id_claims is not None and id_claims["email"] == "a@b.c"
    assert id_claims[jwt.AUTH_CLAIMS] == {"chatgpt_account_id": "acc", "chatgpt_user_id": "u",
                                          "chatgpt_plan_type": "pro", "user_id": "u"}
    cred = credential_from_auth({"tokens": {"id_token": ident, "access_token": access,
                                            "refresh_token": "rt"}})
    assert cred is not None and cred.expires_at_ms == 2_000_000
    assert (cred.oauth["accountId"], cred.oauth["userId"], cred.oauth["issuedAt"]) == \
        ("acc", "u", 1_000_000)
    assert jwt.access_token(exp=2, iat=1) != jwt.access_token(exp=2, iat=1)  # a jti each


# -- the server --------------------------------------------------------------------------------

def test_login_is_auth_json_tokens_with_jwt_lifetime(server: OAuthServer,
                                                     clock: FakeClock) -> None:
    tokens = server.issue_login(account_id="acc-1", user_id="user-1", email="e@x.y")
    assert set(tokens) == {"id_token", "access_token", "refresh_token", "account_id"}
    cred = credential_from_auth({"tokens": tokens})
    assert cred is not None
    assert (cred.oauth["accountId"], cred.oauth["userId"]) == ("acc-1", "user-1")
    assert cred.expires_at == int(clock.now() + HOUR)
    assert (cred.expires_at_ms - cred.oauth["issuedAt"]) / 1000 == HOUR
    assert server.check_access(tokens["access_token"])
    assert server.client_id == CODEX_CLIENT_ID


def test_refresh_answers_three_jwts_and_no_expires_in(server: OAuthServer) -> None:
    tokens = server.issue_login(account_id="acc-1", user_id="user-1")
    status, body = refresh(server, tokens["refresh_token"])
    assert status == 200 and body is not None
    assert set(body) == {"id_token", "access_token", "refresh_token"}
    assert body["refresh_token"] != tokens["refresh_token"]
    claims = jwt_claims(body["access_token"])
    assert claims is not None and claims["exp"] - claims["iat"] == HOUR
    id_claims = jwt_claims(body["id_token"])
    assert id_claims is not None
    assert id_claims[jwt.AUTH_CLAIMS]["chatgpt_account_id"] == "acc-1"
    assert server.check_access(body["access_token"])
    assert [r.style for r in server.log()] == ["codex"]


def test_reuse_revokes_the_family_and_its_tokens_are_invalidated_after(
        server: OAuthServer) -> None:
    tokens = server.issue_login()
    _, first = refresh(server, tokens["refresh_token"])
    assert first is not None
    status, body = refresh(server, tokens["refresh_token"])  # the spent one, again
    assert status == 401 and body is not None
    assert body["error"]["code"] == "refresh_token_reused" and error_code(body) == \
        "refresh_token_reused"
    stats = server.stats()
    assert (stats.reused, stats.revoked_families, stats.rotations) == (1, 1, 1)
    status, body = refresh(server, first["refresh_token"])  # the family's newest: dead too
    assert status == 401 and error_code(body) == "refresh_token_invalidated"
    assert not server.check_access(first["access_token"])
    assert [r.outcome for r in server.log()] == ["rotated", "refresh_token_reused",
                                                 "refresh_token_invalidated"]


def test_expired_unknown_and_wrong_client(clock: FakeClock) -> None:
    with OAuthServer(style="codex", access_lifetime_s=60, refresh_lifetime_s=100,
                     clock=clock) as server:
        tokens = server.issue_login()
        clock.advance(101)
        status, body = refresh(server, tokens["refresh_token"])
        assert (status, error_code(body)) == (401, "refresh_token_expired")
        status, body = refresh(server, "sim-rt-never-issued")
        assert status == 401 and body == {"error": "invalid_grant",
                                          "error_description": "unknown refresh token"}
        status, body = refresh(server, tokens["refresh_token"], client_id="app_other")
        assert (status, error_code(body)) == (401, "invalid_client")


def test_the_http_login_route_takes_an_identity(server: OAuthServer) -> None:
    body = json.dumps({"account_id": "acc-9", "user_id": "u-9"}).encode()
    status, tokens = exchange(urllib.request.Request(server.base_url + "/_sim/login", data=body,
                                                     method="POST"), 5.0)
    assert status == 200 and tokens is not None and tokens["account_id"] == "acc-9"
    cred = credential_from_auth({"tokens": tokens})
    assert cred is not None and cred.oauth["userId"] == "u-9"


def test_error_code_reads_every_shape_codex_reads() -> None:
    assert error_code({"error": {"code": "Refresh_Token_Reused"}}) == "refresh_token_reused"
    assert error_code({"error": "invalid_grant"}) == "invalid_grant"
    assert error_code({"code": "refresh_token_expired"}) == "refresh_token_expired"
    assert error_code({"error": {"message": "no code"}}) is None
    assert error_code(None) is None


# -- one session -------------------------------------------------------------------------------

def test_refreshes_within_five_minutes_of_exp_and_not_before(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    tokens = server.issue_login(account_id="acc", user_id="u")
    home = home_with(tmp_path, "h", tokens, clock.now(), {"credsync_note": "dropped"})
    s = session(home, server, clock)
    exp = s.snapshot.expires_at if s.snapshot else 0.0
    clock.advance(exp - clock.now() - 400)  # the note's experiment 3: exp = now + 400 s
    assert s.turn() is Outcome.IDLE and s.counters.requests == 0
    clock.advance(160)  # experiment 1: exp = now + 240 s
    assert s.turn() is Outcome.REFRESHED
    assert (s.counters.requests, server.stats().rotations) == (1, 1)
    doc = json.loads((home / "auth.json").read_text())
    assert set(doc) == {"OPENAI_API_KEY", "tokens", "last_refresh"}  # serde dropped the rest
    assert doc["tokens"]["refresh_token"] != tokens["refresh_token"]
    assert doc["tokens"]["account_id"] == "acc"
    assert parse_time(doc["last_refresh"]) == pytest.approx(clock.now(), abs=0.001)
    assert stat.S_IMODE((home / "auth.json").stat().st_mode) == 0o600
    assert not list(home.glob(".auth-*"))
    assert s.snapshot is not None and s.snapshot.refresh_token == doc["tokens"]["refresh_token"]
    assert s.turn() is Outcome.IDLE and s.counters.requests == 1  # the new token is far off


def test_guarded_reload_adopts_an_outside_write_with_no_request(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    tokens = server.issue_login()
    home = home_with(tmp_path, "h", tokens, clock.now())
    s = session(home, server, clock)
    clock.advance(HOUR - 303)  # experiment 5: exp = now + 303 s
    assert s.turn() is Outcome.IDLE
    status, fresh = refresh(server, tokens["refresh_token"])  # an outside writer refreshes...
    assert status == 200 and fresh is not None
    CodexStore(home).save(lambda _: login_document({**fresh, "account_id": "sim-account"},
                                                   clock.now()))  # ...and replaces auth.json
    clock.advance(5)  # the window opens: the snapshot in memory is still the old one
    assert s.snapshot is not None and s.snapshot.refresh_token == tokens["refresh_token"]
    assert s.turn() is Outcome.ADOPTED
    assert (s.counters.requests, s.counters.adoptions, server.stats().token_requests) == (0, 1, 1)
    assert s.snapshot is not None and s.snapshot.access_token == fresh["access_token"]


def test_a_different_account_on_disk_fails_permanently_and_sends_nothing(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    home = home_with(tmp_path, "h", server.issue_login(account_id="acc-a"), clock.now())
    s = session(home, server, clock)
    other = server.issue_login(account_id="acc-b")
    CodexStore(home).save(lambda _: login_document(other, clock.now()))
    on_disk = (home / "auth.json").read_bytes()
    clock.advance(HOUR - 100)
    assert s.turn() is Outcome.FAILED
    assert s.failure == "refresh token account mismatch"
    assert (s.counters.account_mismatches, s.counters.forced_relogins) == (1, 1)
    assert s.turn() is Outcome.FAILED and s.counters.forced_relogins == 1  # the same failure
    assert server.stats().token_requests == 0 and s.counters.requests == 0
    assert (home / "auth.json").read_bytes() == on_disk


def test_a_permanent_failure_is_cached_until_the_store_changes(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    tokens = server.issue_login()
    a = session(home_with(tmp_path, "a", tokens, clock.now()), server, clock)
    b_home = home_with(tmp_path, "b", tokens, clock.now())
    b = session(b_home, server, clock)
    clock.advance(HOUR - 200)
    assert a.turn() is Outcome.REFRESHED  # home a redeems the shared token first
    before = (b_home / "auth.json").read_bytes()
    assert b.turn() is Outcome.FAILED  # home b presents the same one: reused
    assert (b.counters.reused, b.counters.forced_relogins, b.failure) == \
        (1, 1, "refresh_token_reused")
    for _ in range(3):
        assert b.turn() is Outcome.FAILED
    assert b.counters.requests == 1 and b.counters.cached_failures >= 3
    assert server.stats().token_requests == 2
    assert (b_home / "auth.json").read_bytes() == before  # Codex never clears its store
    assert a.turn() is Outcome.FAILED  # the reuse revoked a's new token too: 401, invalidated
    assert (a.counters.unauthorized, a.counters.invalidated) == (1, 1)
    fresh = server.issue_login()  # the user signs in again in home b
    CodexStore(b_home).save(lambda _: login_document(fresh, clock.now()))
    assert b.turn() is Outcome.ADOPTED and b.failure is None
    assert b.counters.requests == 1


def test_relogin_writes_a_new_login_that_the_next_reload_adopts(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    tokens = server.issue_login()
    a = session(home_with(tmp_path, "a", tokens, clock.now()), server, clock)
    b_home = home_with(tmp_path, "b", tokens, clock.now())
    b = session(b_home, server, clock, relogin=lambda now: server.issue_login(now))
    clock.advance(HOUR - 200)
    a.turn()
    # b's refresh is refused (reused), the user signs in again, and the same turn's API call,
    # a 401 on the revoked family, reloads the new login.
    assert b.turn() is Outcome.ADOPTED
    assert (b.counters.reused, b.counters.forced_relogins, b.counters.relogins,
            b.counters.unauthorized) == (1, 1, 1, 1)
    assert server.stats().logins == 2 and b.failure is None
    assert b.snapshot is not None and server.check_access(b.snapshot.access_token)
    assert b.turn() is Outcome.IDLE and b.counters.requests == 1


def test_a_401_reloads_an_outside_login_before_refreshing(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    tokens = server.issue_login()
    home = home_with(tmp_path, "h", tokens, clock.now())
    s = session(home, server, clock)
    refresh(server, tokens["refresh_token"])
    refresh(server, tokens["refresh_token"])  # reuse elsewhere: the family is revoked
    fresh = server.issue_login()
    CodexStore(home).save(lambda _: login_document(fresh, clock.now()))
    requests = server.stats().token_requests
    assert s.turn() is Outcome.ADOPTED  # not in its window: the 401 sent it to the store
    assert (s.counters.unauthorized, s.counters.requests) == (1, 0)
    assert server.stats().token_requests == requests


def test_a_401_with_nothing_new_refreshes_then_gives_up(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    tokens = server.issue_login()
    s = session(home_with(tmp_path, "h", tokens, clock.now()), server, clock)
    refresh(server, tokens["refresh_token"])
    refresh(server, tokens["refresh_token"])
    assert s.turn() is Outcome.FAILED
    assert (s.counters.unauthorized, s.counters.requests, s.counters.invalidated,
            s.counters.gave_up) == (1, 1, 1, 1)
    assert s.turn() is Outcome.FAILED and s.counters.requests == 1  # cached: nothing sent


# -- the write locks ---------------------------------------------------------------------------

def test_no_lock_is_held_while_the_request_is_in_flight(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    home = home_with(tmp_path, "h", server.issue_login(), clock.now())
    s = session(home, server, clock)
    free: list[bool] = []

    def in_flight() -> None:
        for name in (AUTH_LOCK, AUTH_JSON_LOCK):
            try:
                with held(home / name):
                    free.append(True)
            except BlockingIOError:
                free.append(False)

    server.on_token_request = in_flight
    clock.advance(HOUR - 100)
    assert s.turn() is Outcome.REFRESHED
    assert free == [True, True]
    assert (home / AUTH_LOCK).exists() and (home / AUTH_JSON_LOCK).exists()
    assert stat.S_IMODE((home / AUTH_JSON_LOCK).stat().st_mode) == 0o600


def test_the_write_waits_for_auth_lock(tmp_path: Path, server: OAuthServer,
                                      clock: FakeClock) -> None:
    tokens = server.issue_login()
    home = home_with(tmp_path, "h", tokens, clock.now())
    s = session(home, server, clock)
    clock.advance(HOUR - 100)
    outcome: list[Outcome] = []
    with held(home / AUTH_LOCK):
        worker = threading.Thread(target=lambda: outcome.append(s.turn()), daemon=True)
        worker.start()
        wait_for(lambda: s.counters.lock_waits == 1, "the session waits on auth.lock")
        assert server.stats().rotations == 1  # it redeemed first, and now waits to save
        on_disk = json.loads((home / "auth.json").read_text())
        assert on_disk["tokens"]["refresh_token"] == tokens["refresh_token"]
        assert worker.is_alive()
    worker.join(DEADLINE_S)
    assert not worker.is_alive() and outcome == [Outcome.REFRESHED]
    on_disk = json.loads((home / "auth.json").read_text())
    assert on_disk["tokens"]["refresh_token"] != tokens["refresh_token"]


def test_a_held_auth_json_lock_is_retried_then_given_up(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    home = home_with(tmp_path, "h", server.issue_login(), clock.now())
    s = session(home, server, clock)
    before = (home / "auth.json").read_bytes()
    clock.advance(HOUR - 100)
    with held(home / AUTH_JSON_LOCK):
        assert s.turn() is Outcome.LOCK_TIMEOUT
    assert (s.counters.lock_waits, s.counters.lock_timeouts) == (1, 1)
    assert (home / "auth.json").read_bytes() == before
    assert not list(home.glob(".auth-*"))
    with held(home / AUTH_LOCK):  # auth.lock was released: it can be had again at once
        pass


# -- as a process ------------------------------------------------------------------------------

def test_runs_as_a_process_and_reports_its_counters(tmp_path: Path) -> None:
    with OAuthServer(style="codex", access_lifetime_s=200) as server:
        home = home_with(tmp_path, "h", server.issue_login(), time.time())  # in the window
        server.set_lifetimes(HOUR)  # the next token is not
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-m", "agent.sim.codex_session", "--home", str(home),
             "--token-url", server.url, "--check-url", server.check_url,
             "--duration-s", "0.3"],
            env=env, capture_output=True, text=True, timeout=30, check=True)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["requests"] == 1 and report["refreshes"] == 1 and report["unauthorized"] == 0


# -- a world without credsync ------------------------------------------------------------------

def test_without_credsync_codex_sessions_in_three_homes_lose_their_login(
        tmp_path: Path) -> None:
    # Each home holds its own copy of the login, and Codex has no lock: every home redeems the
    # same refresh token in its window. The first rotates it; the others are told
    # refresh_token_reused, which revokes the family, so the winner's new token dies too.
    result = run_codex_world(CodexWorldConfig(sessions=6, homes=3, lifetimes=2.0,
                                              lifetime_s=6.0), tmp_path)
    print(json.dumps(result.to_json()))
    assert result.errors == ()
    assert result.reused >= 2 and result.server_reused == result.reused
    assert result.revoked_families >= 1
    assert result.forced_relogins >= 2
    assert result.logins >= 3
    assert result.requests_per_rotation is not None and result.requests_per_rotation > 1
