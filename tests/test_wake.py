"""Sleep and wake with real processes: every session and the agent stopped past the token's
expiry, resumed together, every session calling at once (Claude Code 2.1.332's lock rules in
the simulated sessions). SIGSTOP stands in for the sleep; the fake-clock test of a real suspend
(monotonic clock frozen, wall clock jumped) is in tests/test_refresh.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.locks.mkdirlock import oauth_refresh_lock
from agent.sim.server import OAuthServer
from agent.sim.session import Outcome, Release, SimSession
from agent.sim.wake import WakeConfig, run_wake
from tests.agentproc import AgentProcess, wait_for, write_config
from tests.factories import write_doc

pytestmark = pytest.mark.integration

LIFETIME_S = 8.0
WINDOW_S = 2.0  # the CLI's 5-minute window, scaled to the 8 s lifetime


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=LIFETIME_S) as srv:
        yield srv


def world(tmp_path: Path, server: OAuthServer, n_dirs: int = 3) -> tuple[list[Path], float]:
    dirs = [tmp_path / f"cfg{i}" for i in range(n_dirs)]
    login = server.issue_login()
    for d in dirs:
        write_doc(d, {"claudeAiOauth": login})
    return dirs, login["expiresAt"] / 1000


def test_wake_with_credsync_costs_no_login_and_sends_no_spent_token(tmp_path: Path) -> None:
    got = run_wake(tmp_path, WakeConfig(agent=True))
    assert not got.errors, got
    assert got.reused_refresh_tokens == 0 and got.revoked_families == 0, got
    assert got.forced_relogins == 0 and got.by_sessions == 0, got
    assert got.token_requests == 1, got  # credsync's, once
    assert got.refused_first_turns <= 6, got  # at most each session's first turn
    assert got.wake_to_live_s is not None and got.wake_to_live_s < 10, got
    print(f"wake: {got}")


def test_wake_without_credsync_loses_the_login(tmp_path: Path) -> None:
    # The same morning without the agent: the scenario is hostile enough to fail.
    got = run_wake(tmp_path, WakeConfig(agent=False))
    assert not got.errors, got
    assert got.reused_refresh_tokens >= 1 and got.revoked_families >= 1, got


def test_a_killed_credsync_does_not_block_a_2_1_332_session_past_its_takeover(
        tmp_path: Path, server: OAuthServer) -> None:
    dirs, _ = world(tmp_path, server, n_dirs=1)
    config = write_config(tmp_path / "config.toml", dirs, tmp_path / "state", keychain=False,
                          refresh={"token_url": server.url, "nominal_lifetime_s": 3600,
                                   "client_window_s": 0, "margin_s": 0, "jitter": 0})
    agent = AgentProcess(config)
    agent.wait_started(tmp_path / "state")
    wait_for(lambda: (dirs[0] / ".oauth_refresh.lock").is_dir(), 5, "the guard's lock")
    agent.kill()  # SIGKILL: the lock stays, with an mtime a day ahead that no longer moves
    assert (dirs[0] / ".oauth_refresh.lock").is_dir()
    session = SimSession(dirs[0], server.url, release=Release.V2_1_332, window_s=3600)
    start = time.monotonic()
    assert session.step(time.time()) is Outcome.REFRESHED
    took = time.monotonic() - start
    assert session.counters.takeovers == 1 and session.counters.requests == 1
    assert took < 15, f"blocked {took:.1f} s"  # 5 retries of 1-2 s, then the 7.5 s watch
    assert not oauth_refresh_lock(dirs[0]).path.exists()


def test_a_session_that_finds_credsync_holding_the_lock_waits_and_adopts(
        tmp_path: Path, server: OAuthServer) -> None:
    dirs, expires_at = world(tmp_path, server, n_dirs=1)
    config = write_config(tmp_path / "config.toml", dirs, tmp_path / "state", keychain=False,
                          refresh={"token_url": server.url, "nominal_lifetime_s": LIFETIME_S,
                                   "at_fraction": 0.5, "client_window_s": 0, "margin_s": 0,
                                   "jitter": 0})
    agent = AgentProcess(config)
    try:
        agent.wait_started(tmp_path / "state")
        wait_for(lambda: (dirs[0] / ".oauth_refresh.lock").is_dir(), 5, "the guard's lock")
        assert server.stats().token_requests == 0
        # A session that wants a refresh now (its window covers the whole life), while
        # credsync's own deadline (half the life) is still a few seconds away.
        session = SimSession(dirs[0], server.url, release=Release.V2_1_332,
                             window_s=LIFETIME_S)
        outcome = session.step(time.time())
    finally:
        agent.stop()
    assert outcome is Outcome.ADOPTED, session.counters
    assert session.counters.adopted_while_waiting == 1 and session.counters.requests == 0
    assert session.counters.lock_busy == 0 and server.stats().token_requests == 1
    assert time.time() < expires_at  # adopted before the old token even expired
