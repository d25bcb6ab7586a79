"""The Claude Code session simulator: stepped with an injected clock against the real simulated
server, and as real concurrent processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock, SystemClock
from agent.locks.mkdirlock import legacy_refresh_lock, oauth_refresh_lock
from agent.sim.server import OAuthServer
from agent.sim.session import Outcome, SimSession

REPO = Path(__file__).resolve().parents[1]
LIFETIME_S = 3600
MCP = {"some-server": {"accessToken": "mcp-token"}}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=LIFETIME_S, clock=clock) as srv:
        yield srv


def write_login(config_dir: Path, oauth: Mapping[str, Any]) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    doc = {"claudeAiOauth": dict(oauth), "mcpOAuth": MCP}
    (config_dir / ".credentials.json").write_text(json.dumps(doc))


def stored(config_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((config_dir / ".credentials.json").read_text())
    return doc


def oauth_of(config_dir: Path) -> dict[str, Any]:
    oauth: dict[str, Any] = stored(config_dir)["claudeAiOauth"]
    return oauth


def session(config_dir: Path, server: OAuthServer, **kwargs: Any) -> SimSession:
    kwargs.setdefault("check", server.check_access)
    return SimSession(config_dir, server.url, **kwargs)


def into_window(clock: FakeClock) -> None:
    clock.advance(LIFETIME_S - 300)  # exactly the CLI's "now + 5 min >= expiresAt"


# -- one session ---------------------------------------------------------------------------

@pytest.mark.integration
def test_idle_until_the_cli_window(tmp_path: Path, server: OAuthServer,
                                   clock: FakeClock) -> None:
    write_login(tmp_path / "c", server.issue_login())
    sim = session(tmp_path / "c", server)
    clock.advance(LIFETIME_S - 301)
    assert sim.step(clock.now()) is Outcome.IDLE
    assert (sim.counters.requests, server.stats().token_requests) == (0, 0)
    assert server.stats().checks == 1  # the API call that would have shown a 401
    clock.advance(1)
    assert sim.step(clock.now()) is Outcome.REFRESHED


@pytest.mark.integration
def test_a_refresh_is_saved_like_the_cli_saves_it(tmp_path: Path, server: OAuthServer,
                                                  clock: FakeClock) -> None:
    config_dir = tmp_path / "c"
    login = server.issue_login()
    write_login(config_dir, login)
    into_window(clock)
    assert session(config_dir, server).step(clock.now()) is Outcome.REFRESHED
    oauth = oauth_of(config_dir)
    assert oauth["refreshToken"] != login["refreshToken"]
    assert oauth["expiresAt"] == round((clock.now() + LIFETIME_S) * 1000)
    assert oauth["subscriptionType"] == "max"
    assert stored(config_dir)["mcpOAuth"] == MCP  # keys it does not own survive
    assert server.check_access(oauth["accessToken"])
    assert stat.S_IMODE(os.stat(config_dir / ".credentials.json").st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no legacy lock left
    assert sorted(p.name for p in config_dir.iterdir()) == [".credentials.json"]


@pytest.mark.integration
def test_a_401_triggers_a_refresh_outside_the_window(tmp_path: Path, server: OAuthServer,
                                                     clock: FakeClock) -> None:
    # The file claims a far expiry, the server knows better: the API answers 401.
    write_login(tmp_path / "c", {**server.issue_login(), "expiresAt": 10**13})
    sim = session(tmp_path / "c", server)
    clock.advance(LIFETIME_S + 1)
    assert sim.step(clock.now()) is Outcome.REFRESHED
    assert (sim.counters.unauthorized, sim.counters.requests) == (1, 1)


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["status", "drop"])
def test_a_transient_error_keeps_the_login(tmp_path: Path, server: OAuthServer,
                                           clock: FakeClock, fault: str) -> None:
    write_login(tmp_path / "c", server.issue_login())
    before = oauth_of(tmp_path / "c")
    sim = session(tmp_path / "c", server)
    into_window(clock)
    if fault == "status":
        server.inject_status(503)
    else:
        server.inject_drop()
    assert sim.step(clock.now()) is Outcome.TRANSIENT
    assert oauth_of(tmp_path / "c") == before
    assert sim.step(clock.now()) is Outcome.REFRESHED
    assert sim.counters.transient_errors == 1


def test_no_login_is_logged_out(tmp_path: Path) -> None:
    sim = SimSession(tmp_path, "http://127.0.0.1:9/never-called")
    assert sim.step(0.0) is Outcome.LOGGED_OUT
    write_login(tmp_path, {"accessToken": "", "refreshToken": "", "expiresAt": 0})
    assert sim.step(0.0) is Outcome.LOGGED_OUT
    assert (sim.counters.logged_out_steps, sim.counters.requests) == (2, 0)


# -- the CLI's locks, re-read, compare-and-swap and clearing --------------------------------

@pytest.mark.integration
def test_release_2_1_37_takes_only_the_legacy_lock(tmp_path: Path, server: OAuthServer,
                                                   clock: FakeClock) -> None:
    config_dir = tmp_path / "c"
    write_login(config_dir, server.issue_login())
    into_window(clock)
    current = session(config_dir, server, lock_wait_s=0.2)
    old = session(config_dir, server, cas=False, lock_wait_s=0.2)
    with oauth_refresh_lock(config_dir).hold(1):
        assert current.step(clock.now()) is Outcome.LOCK_BUSY
        assert current.counters.requests == 0
        assert old.step(clock.now()) is Outcome.REFRESHED
    into_window(clock)
    with legacy_refresh_lock(config_dir).hold(1):
        assert current.step(clock.now()) is Outcome.LOCK_BUSY
        assert old.step(clock.now()) is Outcome.LOCK_BUSY
    assert server.stats().token_requests == 1


@pytest.mark.integration
def test_a_token_written_meanwhile_is_adopted_after_locking(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    config_dir = tmp_path / "c"
    write_login(config_dir, {**server.issue_login(), "expiresAt": 10**13})
    fresh = server.issue_login()

    def api_says_401_while_another_process_refreshes(access_token: str) -> bool:
        write_login(config_dir, fresh)
        return False

    sim = session(config_dir, server, check=api_says_401_while_another_process_refreshes)
    assert sim.step(clock.now()) is Outcome.ADOPTED
    assert (sim.counters.requests, server.stats().token_requests) == (0, 0)
    assert oauth_of(config_dir)["accessToken"] == fresh["accessToken"]


@pytest.mark.integration
@pytest.mark.parametrize("cas", [True, False])
def test_compare_and_swap_save(tmp_path: Path, server: OAuthServer, clock: FakeClock,
                               cas: bool) -> None:
    config_dir = tmp_path / "c"
    write_login(config_dir, server.issue_login())
    other_writer = server.issue_login()
    server.on_token_request = lambda: write_login(config_dir, other_writer)
    into_window(clock)
    sim = session(config_dir, server, cas=cas)
    outcome = sim.step(clock.now())
    on_disk = oauth_of(config_dir)["refreshToken"]
    if cas:  # the other writer's login stands; ours is dropped
        assert (outcome, on_disk, sim.counters.refreshes) == (
            Outcome.ADOPTED, other_writer["refreshToken"], 0)
    else:  # 2.1.37 overwrites it
        assert outcome is Outcome.REFRESHED
        assert on_disk != other_writer["refreshToken"]
    assert sim.counters.requests == 1


@pytest.mark.integration
def test_invalid_grant_adopts_a_newer_login_instead_of_clearing(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    config_dir = tmp_path / "c"
    write_login(config_dir, {**server.issue_login(), "refreshToken": "sim-rt-spent"})
    newer = server.issue_login()
    server.on_token_request = lambda: write_login(config_dir, newer)
    into_window(clock)
    sim = session(config_dir, server)
    assert sim.step(clock.now()) is Outcome.ADOPTED
    assert (sim.counters.invalid_grants, sim.counters.forced_relogins) == (1, 0)
    assert oauth_of(config_dir)["refreshToken"] == newer["refreshToken"]


@pytest.mark.integration
def test_invalid_grant_with_nothing_newer_clears_the_login(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    config_dir = tmp_path / "c"
    write_login(config_dir, {**server.issue_login(), "refreshToken": "sim-rt-spent"})
    into_window(clock)
    sim = session(config_dir, server)
    assert sim.step(clock.now()) is Outcome.CLEARED
    oauth = oauth_of(config_dir)
    assert (oauth["accessToken"], oauth["refreshToken"], oauth["expiresAt"]) == ("", "", 0)
    assert stored(config_dir)["mcpOAuth"] == MCP
    assert (sim.counters.invalid_grants, sim.counters.forced_relogins) == (1, 1)
    assert sim.step(clock.now()) is Outcome.LOGGED_OUT


@pytest.mark.integration
def test_relogin_fills_the_cleared_store_with_a_new_family(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    config_dir = tmp_path / "c"
    write_login(config_dir, {**server.issue_login(), "refreshToken": "sim-rt-spent"})
    into_window(clock)
    sim = session(config_dir, server, relogin=server.issue_login)
    assert sim.step(clock.now()) is Outcome.CLEARED
    assert sim.counters.forced_relogins == 1
    assert server.stats().logins == 2
    assert server.check_access(oauth_of(config_dir)["accessToken"])
    assert sim.step(clock.now()) is Outcome.IDLE


# -- several sessions, stepped -------------------------------------------------------------

@pytest.mark.integration
def test_two_config_dirs_sharing_a_login_lose_it(tmp_path: Path, server: OAuthServer,
                                                 clock: FakeClock) -> None:
    login = server.issue_login()
    first, second = (session(tmp_path / name, server) for name in ("a", "b"))
    for sim in (first, second):
        write_login(sim.config_dir, login)
    into_window(clock)
    assert first.step(clock.now()) is Outcome.REFRESHED
    # The second dir's session knows nothing of it: it presents the spent token.
    assert second.step(clock.now()) is Outcome.CLEARED
    assert oauth_of(second.config_dir)["refreshToken"] == ""
    assert server.stats().revoked_families == 1
    # The whole family went with it: the winner's fresh access token now gets a 401.
    assert first.step(clock.now()) is Outcome.CLEARED
    assert first.counters.unauthorized == 1
    assert [s.counters.forced_relogins for s in (first, second)] == [1, 1]
    assert [s.counters.invalid_grants for s in (first, second)] == [1, 1]


@pytest.mark.integration
def test_sessions_in_one_config_dir_keep_the_login(tmp_path: Path, server: OAuthServer,
                                                   clock: FakeClock) -> None:
    write_login(tmp_path / "c", server.issue_login())
    sims = [session(tmp_path / "c", server) for _ in range(3)]
    for _ in range(10 * LIFETIME_S // 120):  # ten lifetimes, each session every 2 minutes
        clock.advance(120)
        for sim in sims:
            assert sim.step(clock.now()) in (Outcome.IDLE, Outcome.REFRESHED)
    stats = server.stats()
    assert stats.rotations >= 10
    assert sum(s.counters.requests for s in sims) == stats.rotations
    assert (stats.invalid_grants, stats.revoked_families) == (0, 0)
    assert sum(s.counters.forced_relogins for s in sims) == 0


# -- real processes ------------------------------------------------------------------------

def run_sessions(argvs: list[list[str]], timeout_s: float) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "agent.sim.session", *argv], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for argv in argvs]
    reports: list[dict[str, Any]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout_s)
            assert proc.returncode == 0, err
            assert err == ""
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)
    return reports


def session_argv(config_dir: Path, server: OAuthServer, start_at: float, *extra: str) -> list[str]:
    return ["--config-dir", str(config_dir), "--token-url", server.url,
            "--check-url", server.check_url, "--start-at", f"{start_at:.3f}",
            "--interval-s", "0.05", *extra]


@pytest.fixture
def realtime_server() -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=1.5, clock=SystemClock()) as srv:
        yield srv


@pytest.mark.integration
def test_processes_in_one_config_dir_with_cas_keep_the_login(
        tmp_path: Path, realtime_server: OAuthServer) -> None:
    server = realtime_server
    config_dir = tmp_path / "shared"
    write_login(config_dir, server.issue_login())
    start_at = time.time() + 1.0  # every process steps from the same moment, already in window
    argv = session_argv(config_dir, server, start_at, "--window-s", "1", "--duration-s", "2.5")
    reports = run_sessions([argv] * 4, timeout_s=30)
    stats = server.stats()
    assert stats.rotations >= 3
    assert (stats.invalid_grants, stats.revoked_families) == (0, 0)
    assert sum(r["forced_relogins"] for r in reports) == 0
    # One request per rotation: every other session adopted the winner's token.
    assert sum(r["requests"] for r in reports) == stats.rotations == stats.token_requests
    assert server.check_access(oauth_of(config_dir)["accessToken"])


@pytest.mark.integration
def test_processes_in_two_config_dirs_sharing_a_login_lose_it(
        tmp_path: Path, realtime_server: OAuthServer) -> None:
    server = realtime_server
    login = server.issue_login()
    dirs = [tmp_path / "a", tmp_path / "b"]
    for config_dir in dirs:
        write_login(config_dir, login)
    start_at = time.time() + 1.0
    reports = run_sessions(
        [session_argv(d, server, start_at, "--window-s", "1", "--duration-s", "6",
                      "--stop-when-logged-out") for d in dirs], timeout_s=30)
    assert [r["last_outcome"] for r in reports] == ["cleared", "cleared"]
    assert sum(r["forced_relogins"] for r in reports) == 2
    assert server.stats().revoked_families == 1
    assert [oauth_of(d)["expiresAt"] for d in dirs] == [0, 0]
