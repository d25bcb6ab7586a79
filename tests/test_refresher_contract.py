"""One contract for the refresher interface agent/refresh.py's Coordinator uses
(``refresh(cred) -> result`` with ``.credential`` and ``.expires_in``; raising InvalidGrantError or
TransientRefreshError), run against every implementation.

Subjects:
  http-claude    agent.refresh.http.HttpRefresher, claude style (JSON), against the real simulated
                 server agent.sim.server.OAuthServer over HTTP on 127.0.0.1
  http-oauth2    HttpRefresher, RFC 6749 form style with HTTP Basic client auth, same server
  lazy-settings  agent.loop.runtime.LazyRefresher, what the agent and the commands really use: built
                 from a Settings' [refresh] section, against the same server
  scripted-fake  tests/test_refresh.py's ScriptedRefresher, the fake the refresh tests run on

Where the fake cannot express a case (a lost or dropped answer: it has no network), the case is
marked per implementation in ``CANNOT_EXPRESS`` (those pairs are not collected). Where it can
express a case and answers otherwise than the real refresher, the row of ``FAKE_LIES`` says how;
those tests are strict xfails: they fail loudly the day the fake is made honest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import CLAUDE_CLIENT_ID, CLAUDE_SCOPE, RefreshSection, Settings
from agent.credential import Credential
from agent.errors import InvalidGrantError, TransientRefreshError
from agent.loop.runtime import LazyRefresher
from agent.refresh.coordinator import Refresher
from agent.refresh.http import HttpRefresher
from agent.sim.server import OAuthServer
from tests.factories import make_cred
from tests.test_refresh import ScriptedRefresher

START = 1_800_000_000.0
LIFETIME_S = 3600.0
TIMEOUT_S = 2.0
# Keys of the CLI's claudeAiOauth object a refresh must carry over untouched.
OTHER_KEYS: dict[str, Any] = {"accountUuid": "acct-1", "someFutureKey": [1, {"a": None}]}


@dataclass
class Subject:
    kind: str
    refresher: Refresher
    clock: FakeClock
    login: Callable[[], Credential]  # a fresh login (a new token family), with OTHER_KEYS
    transient: Callable[[], None]  # the next request fails transiently, nothing rotated
    lost: Callable[[], None] | None = None  # rotated, then the answer is lost
    dropped: Callable[[], None] | None = None  # connection closed before anything was done


def _server_subject(kind: str, clock: FakeClock, server: OAuthServer) -> Subject:
    refresher: Refresher
    if kind == "http-claude":
        refresher = HttpRefresher(server.url, CLAUDE_CLIENT_ID, CLAUDE_SCOPE, "claude",
                                  TIMEOUT_S, clock=clock)
    elif kind == "http-oauth2":
        refresher = HttpRefresher(server.url, server.client_id, server.scope, "oauth2",
                                  TIMEOUT_S, client_secret=server.client_secret, clock=clock)
    else:
        settings = Settings(refresh=RefreshSection(token_url=server.url, timeout_s=TIMEOUT_S))
        refresher = LazyRefresher(settings, clock)
    return Subject(kind, refresher, clock, lambda: Credential({**server.issue_login(),
                                                               **OTHER_KEYS}),
                   transient=lambda: server.inject_status(503),
                   lost=server.inject_lost, dropped=server.inject_drop)


def _fake_subject(clock: FakeClock) -> Subject:
    fake = ScriptedRefresher(clock, lifetime=LIFETIME_S)
    return Subject("scripted-fake", fake, clock,
                   lambda: make_cred(int((clock.now() + LIFETIME_S) * 1000), **OTHER_KEYS),
                   transient=lambda: fake.script.append(
                       TransientRefreshError("token endpoint answered 503",
                                             may_have_rotated=False)))


REAL = ["http-claude", "http-oauth2", "lazy-settings"]
KINDS = [*(pytest.param(k, marks=pytest.mark.integration) for k in REAL), "scripted-fake"]

# Cases an implementation has no way to produce: the fake has no wire to lose an answer on.
CANNOT_EXPRESS: dict[str, set[str]] = {"scripted-fake": {"lost", "dropped"}}

# How the fake the refresh tests rely on differs from the real refresher, case by case.
# Empty since the fake was made honest (it kept no keys, and redeemed any token any number of
# times); a new departure goes here, with how the fake differs.
FAKE_LIES: dict[str, str] = {}


def fake_lies(case: str, kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "scripted-fake" and case in FAKE_LIES:
        request.applymarker(pytest.mark.xfail(strict=True,
                                              reason=f"ScriptedRefresher {FAKE_LIES[case]}"))


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    kind: str = request.param
    clock = FakeClock(START)
    if kind == "scripted-fake":
        yield _fake_subject(clock)
        return
    oauth2 = kind == "http-oauth2"  # a confidential client: its secret in HTTP Basic
    with OAuthServer(access_lifetime_s=LIFETIME_S, clock=clock,
                     client_id="app" if oauth2 else CLAUDE_CLIENT_ID,
                     client_secret="p@ss:word" if oauth2 else None) as server:
        built = _server_subject(kind, clock, server)
        try:
            yield built
        finally:
            close = getattr(built.refresher, "close", None)
            if close is not None:
                close()


def assert_no_token(exc: BaseException, *creds: Credential) -> None:
    text = f"{exc} {exc!r} {exc.args!r}"
    for cred in creds:
        assert cred.refresh_token not in text and cred.access_token not in text


# -- the contract ------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_a_fresh_login_refreshes_to_a_new_credential(subject: Subject) -> None:
    old = subject.login()
    subject.clock.advance(10)
    result = subject.refresher.refresh(old)
    new = result.credential
    assert result.expires_in > 0
    assert new.refresh_token and new.refresh_token != old.refresh_token
    assert new.access_token and new.access_token != old.access_token
    assert new.expires_at_ms == round((subject.clock.now() + result.expires_in) * 1000)


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_a_refresh_keeps_the_old_credentials_other_keys(subject: Subject,
        request: pytest.FixtureRequest) -> None:
    fake_lies("keys", subject.kind, request)
    old = subject.login()
    new = subject.refresher.refresh(old).credential
    changed = {"accessToken", "refreshToken", "expiresAt", "refreshTokenExpiresAt", "scopes"}
    kept = {k: v for k, v in old.oauth.items() if k not in changed}
    assert {k: new.oauth.get(k) for k in kept} == kept


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_the_new_refresh_token_refreshes_in_turn(subject: Subject) -> None:
    first = subject.refresher.refresh(subject.login()).credential
    second = subject.refresher.refresh(first).credential
    assert second.refresh_token not in ("", first.refresh_token)


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_presenting_the_same_refresh_token_again_is_invalid_grant(subject: Subject,
        request: pytest.FixtureRequest) -> None:
    fake_lies("reuse", subject.kind, request)
    old = subject.login()
    new = subject.refresher.refresh(old).credential
    with pytest.raises(InvalidGrantError) as caught:
        subject.refresher.refresh(old)
    assert_no_token(caught.value, old, new)


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_a_credential_without_a_refresh_token_is_invalid_grant(subject: Subject,
        request: pytest.FixtureRequest) -> None:
    fake_lies("no-refresh-token", subject.kind, request)
    login = subject.login()
    bare = Credential({**login.oauth, "refreshToken": ""})
    with pytest.raises(InvalidGrantError):
        subject.refresher.refresh(bare)


@pytest.mark.parametrize("subject", KINDS, indirect=True)
def test_a_transient_failure_rotates_nothing(subject: Subject) -> None:
    # HttpRefresher: the server answers 503; the fake: a scripted transient.
    old = subject.login()
    subject.transient()
    with pytest.raises(TransientRefreshError) as caught:
        subject.refresher.refresh(old)
    assert caught.value.may_have_rotated is False
    assert_no_token(caught.value, old)
    # Nothing was spent: the same token refreshes afterwards.
    assert subject.refresher.refresh(old).credential.refresh_token != old.refresh_token


def expressible(subject: Subject, case: str) -> Callable[[], None]:
    inject = subject.lost if case == "lost" else subject.dropped
    assert inject is not None, f"{subject.kind} should express a {case} answer"
    return inject


def kinds_expressing(case: str) -> list[Any]:
    """The subjects that can stage ``case``; the others are not collected (not skipped)."""
    return [k for k in KINDS
            if case not in CANNOT_EXPRESS.get(k if isinstance(k, str) else k.values[0], set())]


def staged_failure(subject: Subject, case: str) -> tuple[Credential, TransientRefreshError]:
    """A refresh of a fresh login with ``case`` staged on the wire: the login and the error."""
    inject = expressible(subject, case)
    old = subject.login()
    inject()
    with pytest.raises(TransientRefreshError) as caught:
        subject.refresher.refresh(old)
    return old, caught.value


@pytest.mark.parametrize("subject", kinds_expressing("lost"), indirect=True)
def test_a_lost_answer_may_have_rotated_and_the_token_is_spent(subject: Subject) -> None:
    old, error = staged_failure(subject, "lost")
    assert error.may_have_rotated is True
    with pytest.raises(InvalidGrantError):  # why the agent never blindly retries
        subject.refresher.refresh(old)


@pytest.mark.parametrize("subject", kinds_expressing("dropped"), indirect=True)
def test_a_dropped_connection_may_have_rotated(subject: Subject) -> None:
    old, error = staged_failure(subject, "dropped")
    # The client cannot tell a drop before from a drop after the rotation: it must assume one.
    assert error.may_have_rotated is True
    assert_no_token(error, old)
