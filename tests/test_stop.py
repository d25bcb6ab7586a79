"""SIGTERM stops the agent within 2 s, even while a refresh waits for a lock or an answer (F12)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.locks.filelock import FileLock
from agent.sim.server import OAuthServer
from tests.agentproc import AgentProcess, credsync, wait_for, write_config
from tests.factories import write_doc

pytestmark = pytest.mark.integration

STOP_DEADLINE_S = 2.0


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=4) as srv:
        yield srv


def start(tmp_path: Path, server: OAuthServer) -> tuple[AgentProcess, Path]:
    d = tmp_path / "cfg"
    write_doc(d, {"claudeAiOauth": server.issue_login()})
    config = write_config(tmp_path / "config.toml", [d], tmp_path / "state", keychain=False,
                          log_file=tmp_path / "credsync.log",
                          refresh={"token_url": server.url, "nominal_lifetime_s": 4,
                                   "client_window_s": 0, "margin_s": 0, "jitter": 0})
    agent = AgentProcess(config)
    agent.wait_started(tmp_path / "state")
    return agent, config


def test_sigterm_mid_refresh_stops_within_two_seconds_and_never_resends(
        tmp_path: Path, server: OAuthServer) -> None:
    server.inject_delay(18)  # the token server takes 18 s to answer
    agent, config = start(tmp_path, server)
    try:
        wait_for(lambda: server.stats().token_requests >= 1, 10, "the agent's refresh request")
        took = agent.stop(deadline_s=5)
    finally:
        agent.kill()
    assert took < STOP_DEADLINE_S, f"stopped in {took:.2f} s"
    # The answer never reached anyone: the token is spent as far as credsync knows, so it says
    # a re-login is required instead of presenting it again (which would revoke the family).
    out = credsync(["token", "--config", str(config)])
    assert out.returncode == 3, out.stderr
    assert server.stats().token_requests == 1 and server.stats().invalid_grants == 0


def test_sigterm_while_waiting_for_the_refresh_lock_stops_within_two_seconds(
        tmp_path: Path, server: OAuthServer) -> None:
    held = FileLock(tmp_path / "state" / "refresh.lock")
    held.acquire(0)  # another credsync process holds the refresh lock (up to 55 s)
    try:
        issued = time.time()
        agent, _ = start(tmp_path, server)
        try:
            # due at 80 % of the 4 s life: the agent is waiting for the lock by this time
            wait_for(lambda: time.time() > issued + 4.5, 8, "past the refresh deadline")
            took = agent.stop(deadline_s=5)
        finally:
            agent.kill()
    finally:
        held.release()
    assert took < STOP_DEADLINE_S, f"stopped in {took:.2f} s"
    assert server.stats().token_requests == 0

