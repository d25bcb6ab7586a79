"""Sleep and wake with real processes: every session and the agent stopped past the token's
expiry, resumed together, every session calling at once (Claude Code 2.1.332's lock rules in
the simulated sessions). SIGSTOP stands in for the sleep; the fake-clock test of a real suspend
(monotonic clock frozen, wall clock jumped) is in tests/test_refresh.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.credential import parse_document
from agent.locks.mkdirlock import oauth_refresh_lock
from agent.sim.server import OAuthServer
from agent.sim.session import Outcome, Release, SimSession
from tests.agentproc import REPO, AgentProcess, wait_for, write_config
from tests.factories import write_doc

pytestmark = pytest.mark.integration

LIFETIME_S = 8.0
WINDOW_S = 2.0  # the CLI's 5-minute window, scaled to the 8 s lifetime


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=LIFETIME_S) as srv:
        yield srv


def start_sessions(server: OAuthServer, dirs: list[Path],
                   per_dir: int) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen(
        [sys.executable, "-m", "agent.sim.session", "--config-dir", str(d), "--token-url",
         server.url, "--check-url", server.check_url, "--release", "2.1.332", "--window-s",
         str(WINDOW_S), "--interval-s", "0.2", "--duration-s", "120", "--name", f"{d.name}-{i}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for d in dirs for i in range(per_dir)]


def at_work(server: OAuthServer, sessions: list[subprocess.Popen[str]]) -> None:
    """Every session is past its start-up and calling the API (a few turns each)."""
    wait_for(lambda: server.stats().checks >= 3 * len(sessions), 15, "every session at work")


def reports(sessions: list[subprocess.Popen[str]]) -> list[dict[str, object]]:
    out = []
    for proc in sessions:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def live_everywhere(dirs: list[Path]) -> bool:
    now = time.time()
    for d in dirs:
        cred = parse_document((d / ".credentials.json").read_bytes())[0].valid
        if cred is None or cred.expires_at <= now + WINDOW_S:
            return False
    return True


def sleep_and_wake(dirs: list[Path], procs: list[int], until: float) -> float:
    """Stop every process, let the wall clock pass ``until``, resume them all together."""
    for pid in procs:
        os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: time.time() > until, LIFETIME_S * 3, "the token's expiry, asleep",
             interval_s=0.05)
    woke = time.time()
    for pid in procs:
        os.kill(pid, signal.SIGCONT)
    return woke


def world(tmp_path: Path, server: OAuthServer, n_dirs: int = 3) -> tuple[list[Path], float]:
    dirs = [tmp_path / f"cfg{i}" for i in range(n_dirs)]
    login = server.issue_login()
    for d in dirs:
        write_doc(d, {"claudeAiOauth": login})
    return dirs, login["expiresAt"] / 1000


def test_wake_with_credsync_costs_no_login_and_sends_no_spent_token(
        tmp_path: Path, server: OAuthServer) -> None:
    dirs, expires_at = world(tmp_path, server)
    config = write_config(tmp_path / "config.toml", dirs, tmp_path / "state", keychain=False,
                          log_file=tmp_path / "credsync.log",
                          refresh={"token_url": server.url, "nominal_lifetime_s": LIFETIME_S,
                                   "client_window_s": WINDOW_S, "margin_s": 0, "jitter": 0})
    agent = AgentProcess(config)
    try:
        agent.wait_started(tmp_path / "state")
        # The agent holds every dir's refresh lock while it keeps the login.
        wait_for(lambda: all((d / ".oauth_refresh.lock").is_dir() for d in dirs), 5,
                 "the CLI refresh locks held")
        sessions = start_sessions(server, dirs, per_dir=2)
        at_work(server, sessions)
        # Asleep before credsync's own deadline (80 % of the life), awake after the expiry.
        woke = sleep_and_wake(dirs, [agent.proc.pid, *(s.pid for s in sessions)],
                              until=expires_at + 1.0)
        took = wait_for(lambda: live_everywhere(dirs), 20, "a live token in every dir")
        # Every session gets a few turns after the wake.
        wait_for(lambda: time.time() > woke + 3.0, 10, "turns after the wake")
        got = reports(sessions)
    finally:
        agent.stop()
    stats = server.stats()
    assert stats.invalid_grants == 0 and stats.revoked_families == 0, stats
    assert sum(int(r["forced_relogins"]) for r in got) == 0, got  # type: ignore[call-overload]
    assert sum(int(r["requests"]) for r in got) == 0, got  # type: ignore[call-overload]
    refused = sum(int(r["lock_busy"]) for r in got)  # type: ignore[call-overload]
    assert refused <= len(got), got  # at most each session's first turn
    assert took < 10, f"{took:.1f} s from wake to a live token in every dir"
    print(f"wake: {took:.2f} s to live tokens everywhere, {refused} refused turns, "
          f"{stats.token_requests} token requests")


def test_wake_without_credsync_loses_the_login(tmp_path: Path, server: OAuthServer) -> None:
    # The same morning without the agent: the scenario is hostile enough to fail.
    dirs, expires_at = world(tmp_path, server)
    sessions = start_sessions(server, dirs, per_dir=2)
    at_work(server, sessions)
    sleep_and_wake(dirs, [s.pid for s in sessions], until=expires_at + 1.0)
    wait_for(lambda: server.stats().invalid_grants >= 1, 20, "a spent refresh token presented")
    reports(sessions)
    assert server.stats().revoked_families >= 1


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
