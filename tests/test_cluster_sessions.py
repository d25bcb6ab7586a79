"""Sessions on several machines (the multi-machine brief's T7): simulated Claude Code 2.1.332
sessions, as real processes, on two machines that share one login through a real redis-server,
while Redis is killed and restarted empty.

What a user of such machines sees is the sessions: none of them ever has to refresh (credsync
on some machine always does it first), none is refused by the API (401), none is told to log
in again, and the server sees one token request per rotation, whichever machine sent it. Also
against a server that ends the old access tokens at each rotation (the brief's T8): a session
refused then finds its CLI lock held by its machine's credsync (the wake guard), waits, and
takes the new login when it arrives; it never sends the spent refresh token.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.sim.server import OAuthServer
from tests.agentproc import REPO, wait_for
from tests.clusterworld import Machine, Tap, World, leaked
from tests.redisproc import TcpProxy, running

pytestmark = pytest.mark.integration

# 20 s tokens: credsync refreshes at 16 s, 4 s before expiry; that lead outlasts the world's 3 s
# quarantine after a Redis data loss (no claims then) plus the sessions' own 0.5 s window, so a
# restart at the worst moment still leaves credsync ahead of every session.
LIFETIME_S = 20.0
SESSION_WINDOW_S = 0.5
SESSIONS_PER_MACHINE = 2


@contextlib.contextmanager
def make_world(tmp_path: Path, revoke_old_access: bool = False) -> Iterator[World]:
    with running(tmp_path / "redis") as redis, \
            OAuthServer(access_lifetime_s=LIFETIME_S, revoke_old_access=revoke_old_access) \
            as server:
        w = World(tmp_path, redis, server, LIFETIME_S)
        w.tap = Tap(redis.port)
        try:
            yield w
        finally:
            w.tap.close()
            w.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with make_world(tmp_path) as w:
        yield w


def start_sessions(world: World, machine: Machine) -> list[subprocess.Popen[str]]:
    env = {**machine.env, "PYTHONPATH": str(REPO)}
    return [subprocess.Popen(
        [sys.executable, "-m", "agent.sim.session", "--config-dir", str(machine.home / ".claude"),
         "--token-url", world.server.url, "--check-url", world.server.check_url,
         "--release", "2.1.332", "--window-s", str(SESSION_WINDOW_S), "--interval-s", "0.25",
         "--duration-s", "300", "--name", f"{machine.name}-{i}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(SESSIONS_PER_MACHINE)]


def stop_sessions(sessions: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """SIGTERM every session, then its report (its counters, as JSON on its last line)."""
    for proc in sessions:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    reports = []
    for proc in sessions:
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=5)
            raise AssertionError("a session did not stop on SIGTERM") from None
        assert proc.returncode == 0 and out.strip(), err[-2000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def test_sessions_on_two_machines_never_refresh_through_redis_restarts(world: World) -> None:
    a, b = world.add("a"), world.add("b")
    world.launch()
    sessions = start_sessions(world, a) + start_sessions(world, b)
    try:
        # Restarts 9 s apart, so that each rotation (every 16 s) meets a different moment of
        # the quarantine that follows a data loss.
        for _ in range(4):
            world.run_for(9)
            world.redis.restart_empty()
        world.run_for(8)
    finally:
        reports = stop_sessions(sessions)
    world.wait_live(10)
    stats = world.server.stats()
    assert stats.rotations >= 2, (stats, world.logs())
    assert stats.token_requests == stats.rotations, (stats, world.logs())
    assert (stats.invalid_grants, stats.revoked_families) == (0, 0), (stats, world.logs())
    assert stats.unauthorized == 0 and stats.checks > 0, stats
    assert len(reports) == 2 * SESSIONS_PER_MACHINE
    for report in reports:  # every session ran, and never had to act on its own
        assert report["requests"] == 0, report
        assert (report["unauthorized"], report["invalid_grants"]) == (0, 0), report
        assert report["forced_relogins"] == 0 and report["logged_out_steps"] == 0, report
    assert world.tap is not None
    assert leaked(world.redis_texts() + world.tap.messages, world.server.issued_tokens()) == []


def test_a_server_that_ends_old_access_tokens_sessions_cut_off_wait_and_adopt(
        tmp_path: Path) -> None:
    # The brief's T8: the server ends every older access token at each rotation. Machine b's
    # link to Redis is stalled across a rotation made by a, so b's sessions are refused (401)
    # with a login that is still valid by its expiry: each goes to refresh, finds its CLI lock
    # held by b's credsync (the wake guard), waits, and takes the new login once b has it. No
    # session ever sends the spent refresh token.
    with make_world(tmp_path, revoke_old_access=True) as world:
        proxy = TcpProxy(world.redis.port)
        try:
            a, b = world.add("a"), world.add("b", url=proxy.url)
            login = world.launch()
            sessions = start_sessions(world, a) + start_sessions(world, b)
            try:
                due = login.expires_at - 0.2 * LIFETIME_S  # a refreshes at 80 %
                world.run_for(max(0.0, due - 3 - time.time()))
                proxy.stall()
                wait_for(lambda: b.down_since() is not None, 5, "b to notice its link is down")
                wait_for(lambda: world.server.stats().rotations >= 1, 10, "a to rotate")
                world.run_for(3)  # b's sessions now hold a revoked access token
                assert not world.on_live_token([b])
                proxy.resume()
                world.wait_live(10, "b on the live token once its link is back")
                world.run_for(4)  # b's sessions adopt it on their next turn
            finally:
                reports = stop_sessions(sessions)
            world.wait_live(10)
            stats = world.server.stats()
            assert stats.rotations >= 1 and stats.token_requests == stats.rotations, stats
            assert (stats.invalid_grants, stats.revoked_families) == (0, 0), \
                (stats, world.logs())
            on_b = [r for r in reports if str(r["name"]).startswith("b-")]
            assert sum(int(r["unauthorized"]) for r in on_b) > 0, on_b  # the 401 path ran
            assert sum(int(r["adopted_while_waiting"]) for r in on_b) > 0, on_b  # and waited
            for report in reports:
                assert report["requests"] == 0 and report["invalid_grants"] == 0, report
                assert report["forced_relogins"] == 0, report
        finally:
            proxy.close()
