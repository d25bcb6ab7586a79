"""The Claude Code session simulator: stepped with an injected clock against the real simulated
server, and as real concurrent processes."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock, SystemClock
from agent.locks.mkdirlock import legacy_refresh_lock, oauth_refresh_lock
from agent.sim.server import OAuthServer
from agent.sim.session import (
    OAUTH_LOCK_OWNER_FILE,
    Outcome,
    Release,
    SimSession,
    _parser,
    main,
)

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


# -- release 2.1.332: one lock attempt at a time, retries, the mtime watch, takeover --------

NEVER_CALLED = "http://127.0.0.1:9/never-called"


class FakeSleep:
    """The session's injected sleep: it advances the fake clock at once and then does what a
    test wants to happen meanwhile (``during(n)`` after the n-th sleep, from 1)."""

    def __init__(self, clock: FakeClock, during: Callable[[int], None] | None = None) -> None:
        self.clock = clock
        self.during = during
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)
        if self.during is not None:
            self.during(len(self.slept))


def session_332(config_dir: Path, token_url: str, clock: FakeClock, sleep: FakeSleep,
                **kwargs: Any) -> SimSession:
    return SimSession(config_dir, token_url, release="2.1.332", sleep=sleep,
                      monotonic=clock.monotonic, rng=random.Random(332), **kwargs)


def expiring_login(clock: FakeClock, tag: str) -> dict[str, Any]:
    return {"accessToken": f"sim-at-{tag}", "refreshToken": f"sim-rt-{tag}",
            "expiresAt": round((clock.now() + 60) * 1000), "subscriptionType": "max"}


def someone_holds_the_lock(config_dir: Path) -> Path:
    lock_dir = config_dir / ".oauth_refresh.lock"
    lock_dir.mkdir()
    return lock_dir


def test_release_defaults_follow_the_cas_flag(tmp_path: Path) -> None:
    assert SimSession(tmp_path, NEVER_CALLED).release is Release.CURRENT
    assert SimSession(tmp_path, NEVER_CALLED, cas=True).release is Release.CURRENT
    assert SimSession(tmp_path, NEVER_CALLED, cas=False).release is Release.V2_1_37
    new = SimSession(tmp_path, NEVER_CALLED, release="2.1.332")
    assert (new.release, new.cas) == (Release.V2_1_332, True)
    assert SimSession(tmp_path, NEVER_CALLED, release="2.1.37").cas is False
    with pytest.raises(ValueError):
        SimSession(tmp_path, NEVER_CALLED, cas=False, release="current")
    with pytest.raises(ValueError):
        SimSession(tmp_path, NEVER_CALLED, release="2.2")


def test_the_command_line_takes_a_release(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--config-dir", str(tmp_path), "--token-url", NEVER_CALLED]
    assert _parser().parse_args([*base, "--release", "2.1.332"]).release == "2.1.332"
    assert main([*base, "--release", "2.1.332", "--duration-s", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["adopted_while_waiting"], report["takeovers"]) == (0, 0)
    with pytest.raises(SystemExit):
        main([*base, "--no-cas", "--release", "2.1.332"])
    with pytest.raises(SystemExit):
        _parser().parse_args([*base, "--release", "2.2"])


@pytest.mark.parametrize(("retry_s", "sleeps"), [
    (1.0, [1.0] * 5 + [2.5]),  # the shortest retries: the watch waits out the rest of 7.5 s
    (2.0, [2.0] * 5),  # the longest: 10 s already past the watch
    (None, None),  # random 1-2 s
])
def test_2_1_332_gives_up_on_a_lock_whose_holder_is_alive(
        tmp_path: Path, clock: FakeClock, retry_s: float | None,
        sleeps: list[float] | None) -> None:
    write_login(tmp_path, expiring_login(clock, "1"))
    before = oauth_of(tmp_path)
    lock_dir = someone_holds_the_lock(tmp_path)

    def holder_touches_it(n: int) -> None:  # as the live holder's keeper does
        mtime = os.stat(lock_dir).st_mtime + 1
        os.utime(lock_dir, (mtime, mtime))

    sleep = FakeSleep(clock, holder_touches_it)
    extra = {} if retry_s is None else {"retry_sleep_s": (retry_s, retry_s)}
    sim = session_332(tmp_path, NEVER_CALLED, clock, sleep, **extra)
    assert sim.step(clock.now()) is Outcome.LOCK_BUSY
    if sleeps is not None:
        assert sleep.slept == pytest.approx(sleeps)
    retries = sleep.slept[:5]
    assert all(1.0 <= s <= 2.0 for s in retries)
    assert len(sleep.slept) == (6 if sum(retries) < 7.5 else 5)  # the rest of the 7.5 s watch
    assert clock.monotonic() == pytest.approx(max(7.5, sum(retries)))
    assert (sim.counters.lock_busy, sim.counters.requests, sim.counters.takeovers) == (1, 0, 0)
    assert lock_dir.is_dir()  # still the holder's
    assert not (tmp_path / OAUTH_LOCK_OWNER_FILE).exists()
    assert oauth_of(tmp_path) == before


@pytest.mark.integration
def test_2_1_332_takes_over_a_lock_whose_holder_died(tmp_path: Path, server: OAuthServer,
                                                    clock: FakeClock) -> None:
    write_login(tmp_path, server.issue_login())
    into_window(clock)
    lock_dir = someone_holds_the_lock(tmp_path)  # and nobody touches it again
    sleep = FakeSleep(clock)
    sim = session_332(tmp_path, server.url, clock, sleep, check=server.check_access)
    started = clock.monotonic()
    assert sim.step(clock.now()) is Outcome.REFRESHED
    assert clock.monotonic() - started == pytest.approx(max(7.5, sum(sleep.slept[:5])))
    assert (sim.counters.takeovers, sim.counters.requests, sim.counters.refreshes) == (1, 1, 1)
    assert server.stats().token_requests == 1
    owner = json.loads((tmp_path / OAUTH_LOCK_OWNER_FILE).read_text())
    assert owner == {"pid": os.getpid()}
    assert not lock_dir.exists()  # taken over, then released
    assert server.check_access(oauth_of(tmp_path)["accessToken"])
    assert oauth_of(tmp_path)["expiresAt"] == round((clock.now() + LIFETIME_S) * 1000)


def test_2_1_332_adopts_a_token_written_while_it_retries(tmp_path: Path,
                                                        clock: FakeClock) -> None:
    write_login(tmp_path, expiring_login(clock, "1"))
    lock_dir = someone_holds_the_lock(tmp_path)
    lock_mtime = os.stat(lock_dir).st_mtime
    fresh = {**expiring_login(clock, "2"), "expiresAt": round((clock.now() + 3600) * 1000)}

    def holder_saves_its_refresh(n: int) -> None:
        if n == 2:
            write_login(tmp_path, fresh)

    sleep = FakeSleep(clock, holder_saves_its_refresh)
    sim = session_332(tmp_path, NEVER_CALLED, clock, sleep)
    assert sim.step(clock.now()) is Outcome.ADOPTED
    assert len(sleep.slept) == 2
    assert (sim.counters.adopted_while_waiting, sim.counters.adoptions) == (1, 1)
    assert (sim.counters.requests, sim.counters.takeovers, sim.counters.lock_busy) == (0, 0, 0)
    assert os.stat(lock_dir).st_mtime == lock_mtime  # never taken, never removed
    assert not (tmp_path / OAUTH_LOCK_OWNER_FILE).exists()
    assert oauth_of(tmp_path) == fresh
    assert sim.step(clock.now()) is Outcome.IDLE


def test_2_1_332_adopts_a_changed_access_token_before_it_locks(tmp_path: Path,
                                                              clock: FakeClock) -> None:
    write_login(tmp_path, {**expiring_login(clock, "1"), "expiresAt": 10**13})
    fresh = {**expiring_login(clock, "2"), "expiresAt": 10**13}

    def api_says_401_while_another_process_refreshes(access_token: str) -> bool:
        write_login(tmp_path, fresh)
        return False

    sleep = FakeSleep(clock)
    sim = session_332(tmp_path, NEVER_CALLED, clock, sleep,
                      check=api_says_401_while_another_process_refreshes)
    assert sim.step(clock.now()) is Outcome.ADOPTED
    assert (sim.counters.adoptions, sim.counters.adopted_while_waiting) == (1, 0)
    assert (sleep.slept, sim.counters.requests) == ([], 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".credentials.json"]


@pytest.mark.integration
def test_2_1_332_takes_only_the_oauth_refresh_lock(tmp_path: Path, server: OAuthServer,
                                                   clock: FakeClock) -> None:
    config_dir = tmp_path / "c"
    write_login(config_dir, server.issue_login())
    into_window(clock)
    sleep = FakeSleep(clock)
    sim = session_332(config_dir, server.url, clock, sleep, check=server.check_access)
    with legacy_refresh_lock(config_dir).hold(1):
        assert sim.step(clock.now()) is Outcome.REFRESHED
    assert (sleep.slept, sim.counters.requests, sim.counters.refreshes) == ([], 1, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert sorted(p.name for p in config_dir.iterdir()) == [".credentials.json"]


@pytest.mark.integration
def test_2_1_332_saves_with_compare_and_swap(tmp_path: Path, server: OAuthServer,
                                             clock: FakeClock) -> None:
    write_login(tmp_path, server.issue_login())
    other_writer = server.issue_login()
    server.on_token_request = lambda: write_login(tmp_path, other_writer)
    into_window(clock)
    sim = session_332(tmp_path, server.url, clock, FakeSleep(clock), check=server.check_access)
    assert sim.step(clock.now()) is Outcome.ADOPTED
    assert oauth_of(tmp_path)["refreshToken"] == other_writer["refreshToken"]
    assert (sim.counters.requests, sim.counters.refreshes) == (1, 0)


@pytest.mark.integration
def test_2_1_332_clears_to_its_dead_login_form(tmp_path: Path, server: OAuthServer,
                                               clock: FakeClock) -> None:
    spent = {**server.issue_login(), "refreshToken": "sim-rt-spent", "loginEnded": "time_limit"}
    write_login(tmp_path, spent)
    into_window(clock)
    sim = session_332(tmp_path, server.url, clock, FakeSleep(clock), check=server.check_access)
    assert sim.step(clock.now()) is Outcome.CLEARED
    kept = {k: v for k, v in spent.items() if k != "loginEnded"}
    assert oauth_of(tmp_path) == {**kept, "accessToken": "", "refreshToken": "", "expiresAt": 0}
    assert stored(tmp_path)["mcpOAuth"] == MCP
    assert (sim.counters.invalid_grants, sim.counters.forced_relogins) == (1, 1)


HOLDER = """
import sys
from pathlib import Path
from agent.locks.mkdirlock import oauth_refresh_lock
lock = oauth_refresh_lock(Path(sys.argv[1]))
lock.acquire(0)  # the shared keeper touches its mtime every 5 s from now on
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


@pytest.mark.integration
@pytest.mark.parametrize("holder_fate", ["alive", "killed"])
def test_2_1_332_against_a_real_holder_process(tmp_path: Path, realtime_server: OAuthServer,
                                               holder_fate: str) -> None:
    # Real sleeps, the CLI's own 1-2 s retries and 7.5 s watch: each case takes 7.5-10 s.
    server = realtime_server
    write_login(tmp_path, server.issue_login())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        if holder_fate == "killed":
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=5)
        sim = SimSession(tmp_path, server.url, release=Release.V2_1_332,
                         check=server.check_access)
        started = time.monotonic()
        outcome = sim.step(time.time())
        elapsed = time.monotonic() - started
        assert 7.5 <= elapsed < 11
        if holder_fate == "alive":
            assert outcome is Outcome.LOCK_BUSY
            assert (sim.counters.requests, sim.counters.takeovers) == (0, 0)
            assert holder.poll() is None
            holder.communicate("\n", timeout=5)  # it releases the lock and exits
            assert holder.returncode == 0
            assert sim.step(time.time()) is Outcome.REFRESHED  # the lock is free now
        else:
            assert outcome is Outcome.REFRESHED
            assert sim.counters.takeovers == 1
            owner = json.loads((tmp_path / OAUTH_LOCK_OWNER_FILE).read_text())
            assert owner == {"pid": os.getpid()}
        assert sim.counters.requests == server.stats().token_requests == 1
        assert not (tmp_path / ".oauth_refresh.lock").exists()
        assert server.check_access(oauth_of(tmp_path)["accessToken"])
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=5)  # closes its pipes
