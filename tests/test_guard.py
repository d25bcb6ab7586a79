"""The wake guard: the CLI's refresh locks held by the agent, by the CLI's own rules."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.locks import owner as lockowner
from agent.locks.guard import AHEAD_S, KEEP_AHEAD_S, CliLockGuard
from agent.locks.mkdirlock import legacy_refresh_lock, oauth_refresh_lock
from agent.sim.server import OAuthServer
from tests.agentproc import AgentProcess, credsync, wait_for, write_config
from tests.factories import write_doc


def lock_paths(d: Path) -> list[Path]:
    return [oauth_refresh_lock(d).path, legacy_refresh_lock(d).path]


def test_hold_marks_both_locks_of_every_dir_a_month_ahead(tmp_path: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    guard = CliLockGuard([*dirs, tmp_path / "not-yet"])
    now = time.time()
    guard.hold(now)
    assert guard.held == sorted(p for d in dirs for p in lock_paths(d))
    for path in guard.held:
        assert lockowner.held_by_live_credsync(path)
        # an mtime ahead: no sleep shorter than that makes it look stale (60 s) at wake
        assert os.stat(path).st_mtime == pytest.approx(now + AHEAD_S, abs=1)
    guard.release()
    assert not any(p.exists() for d in dirs for p in lock_paths(d))


def test_beat_moves_the_mtime_and_lets_go_of_a_lock_taken_over(tmp_path: Path) -> None:
    d = tmp_path / "a"
    d.mkdir()
    guard = CliLockGuard([d])
    guard.hold(1000.0)
    assert guard.next_beat() == 1000.0 + guard.beat_s
    taken = oauth_refresh_lock(d).path
    os.rmdir(taken)  # a 2.1.332 session took it over (remove, then mkdir its own)
    os.mkdir(taken)
    guard.beat(1002.0)
    assert taken not in guard.held  # ours no more: not touched, not removed
    assert os.stat(taken).st_mtime != pytest.approx(1002.0 + AHEAD_S)
    # the legacy lock (no takeover watches it) stays ahead, moved twice an hour only
    assert os.stat(legacy_refresh_lock(d).path).st_mtime == pytest.approx(1000.0 + AHEAD_S)
    guard.beat(1000.0 + KEEP_AHEAD_S)
    assert os.stat(legacy_refresh_lock(d).path).st_mtime == pytest.approx(
        1000.0 + KEEP_AHEAD_S + AHEAD_S)
    guard.release()
    assert taken.is_dir()  # the session's lock stays
    os.rmdir(taken)
    guard.hold(1004.0)  # free again: held again
    assert taken in guard.held
    guard.release()


def test_a_busy_lock_is_tried_again_at_the_next_beat(tmp_path: Path) -> None:
    d = tmp_path / "a"
    d.mkdir()
    session = oauth_refresh_lock(d)
    session.acquire(0)  # a CLI session is refreshing right now
    guard = CliLockGuard([d])
    guard.hold(time.time())
    assert guard.held == [legacy_refresh_lock(d).path]
    session.release()
    guard.beat(time.time())
    assert guard.held == sorted(lock_paths(d))
    guard.release()


@pytest.mark.integration
def test_one_shot_refresh_shares_the_agents_locks(tmp_path: Path) -> None:
    with OAuthServer(access_lifetime_s=3600) as server:
        d = tmp_path / "cfg"
        write_doc(d, {"claudeAiOauth": server.issue_login()})
        config = write_config(tmp_path / "config.toml", [d], tmp_path / "state",
                              keychain=False, refresh={"token_url": server.url, "jitter": 0,
                                                       "nominal_lifetime_s": 3600})
        agent = AgentProcess(config)
        try:
            agent.wait_started(tmp_path / "state")
            wait_for(lambda: (d / ".oauth_refresh.lock").is_dir(), 5, "the agent's guard")
            before = server.stats().token_requests  # 0: the agent is not due for 48 min
            start = time.monotonic()
            out = credsync(["refresh", "--config", str(config)])
            took = time.monotonic() - start
        finally:
            agent.stop()
        assert out.returncode == 0 and out.stdout.startswith("refreshed"), out
        assert took < 5, f"{took:.1f} s: it waited for the agent's locks"
        assert server.stats().token_requests == before + 1
        # the agent let go of them when it stopped
        assert not (d / ".oauth_refresh.lock").exists()


def test_no_one_watching_no_move_until_it_is_due(tmp_path: Path) -> None:
    d = tmp_path / "a"
    d.mkdir()
    guard = CliLockGuard([d])
    guard.hold(1000.0)
    refresh_lock = oauth_refresh_lock(d).path
    guard.beat(1003.5, watched=False)  # a fresh login: no session looks at the lock
    assert os.stat(refresh_lock).st_mtime == pytest.approx(1000.0 + AHEAD_S)
    guard.beat(1007.0, watched=True)  # near the expiry, or woken: sessions may be watching
    assert os.stat(refresh_lock).st_mtime == pytest.approx(1007.0 + AHEAD_S)
    guard.beat(1007.0 + KEEP_AHEAD_S, watched=False)  # kept a day ahead all the same
    assert os.stat(refresh_lock).st_mtime == pytest.approx(1007.0 + KEEP_AHEAD_S + AHEAD_S)
    guard.release()
