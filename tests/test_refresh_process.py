"""Refresh for real: real credsync processes, the CLI's lock directories, a real OAuth server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.credential import Credential, parse_document
from agent.locks.mkdirlock import OAUTH_REFRESH_STALE_S
from agent.sim.server import OAuthServer
from tests.agentproc import REPO, AgentProcess, credsync, wait_for, write_config
from tests.factories import write_doc

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=3600) as srv:
        yield srv


def setup_world(tmp: Path, server: OAuthServer, expires_in_s: float,
                n_dirs: int = 2, **refresh: object) -> tuple[Path, list[Path], Credential]:
    dirs = [tmp / f"cfg{i}" for i in range(n_dirs)]
    oauth = server.issue_login()
    oauth["expiresAt"] = int((time.time() + expires_in_s) * 1000)
    for d in dirs:
        write_doc(d, {"claudeAiOauth": oauth})
    settings = {"token_url": server.url, "jitter": 0, **refresh}
    config = write_config(tmp / "config.toml", dirs, tmp / "state", keychain=False,
                          refresh=settings)
    cred = parse_document(json.dumps({"claudeAiOauth": oauth}).encode())[0].valid
    assert cred is not None
    return config, dirs, cred


def file_cred(d: Path) -> Credential | None:
    return parse_document((d / ".credentials.json").read_bytes())[0].valid


def test_eight_token_processes_at_once_cause_exactly_one_request(
        tmp_path: Path, server: OAuthServer) -> None:
    # expires in 200 s: inside the CLI's 5-minute window, so every process finds it due
    config, dirs, old = setup_world(tmp_path, server, 200)
    procs = [subprocess.Popen([sys.executable, "-m", "agent.cli", "token", "--config",
                               str(config)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    tokens = {o.strip() for o, _ in outs}
    assert server.stats().token_requests == 1
    assert server.stats().invalid_grants == 0
    new = file_cred(dirs[0])
    assert new is not None and tokens == {new.access_token} and new != old
    assert file_cred(dirs[1]) == new


def test_token_with_a_fresh_login_sends_nothing(tmp_path: Path, server: OAuthServer) -> None:
    # 7 h left of a nominal 8 h lifetime: not due until 1.6 h before expiry
    config, _, cred = setup_world(tmp_path, server, 7 * 3600)
    out = credsync(["token", "--config", str(config)])
    assert out.returncode == 0 and out.stdout == cred.access_token + "\n"
    assert server.stats().token_requests == 0


def test_token_exits_3_when_a_relogin_is_required(tmp_path: Path, server: OAuthServer) -> None:
    config, dirs, cred = setup_world(tmp_path, server, 100)
    # the server no longer knows this family: any refresh is refused
    write_doc(dirs[0], {"claudeAiOauth": {**cred.to_json_obj(), "refreshToken": "revoked"}})
    write_doc(dirs[1], {"claudeAiOauth": {**cred.to_json_obj(), "refreshToken": "revoked"}})
    out = credsync(["token", "--config", str(config)])
    assert out.returncode == 3, out.stderr
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "/login" in out.stderr
    assert cred.access_token not in out.stderr


def test_refresh_command_prints_one_line(tmp_path: Path, server: OAuthServer) -> None:
    config, dirs, cred = setup_world(tmp_path, server, 3000)
    out = credsync(["refresh", "--config", str(config)])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refreshed:") and len(out.stdout.splitlines()) == 1
    new = file_cred(dirs[1])
    assert new is not None and new.access_token not in out.stdout and new != cred


def test_a_lock_left_by_a_killed_process_is_taken_over_only_when_stale(
        tmp_path: Path, server: OAuthServer) -> None:
    config, dirs, _ = setup_world(tmp_path, server, 3000)
    lock = dirs[1] / ".oauth_refresh.lock"
    holder = subprocess.Popen([sys.executable, "-c",
                               f"import os,time; os.mkdir({str(lock)!r}); time.sleep(600)"])
    wait_for(lock.exists, 10, "the holder's lock dir")
    holder.kill()
    holder.wait(timeout=5)
    # the dead holder's lock is 3 s short of stale: credsync must wait those 3 s, not less
    age = OAUTH_REFRESH_STALE_S - 3
    os.utime(lock, (time.time() - age, time.time() - age))
    start = time.monotonic()
    out = credsync(["refresh", "--config", str(config)])
    took = time.monotonic() - start
    assert out.returncode == 0, out.stdout + out.stderr
    assert took >= 2.8, took
    assert server.stats().token_requests == 1
    assert not lock.exists()


def test_a_live_cli_lock_is_never_taken_over(tmp_path: Path, server: OAuthServer) -> None:
    config, dirs, _ = setup_world(tmp_path, server, 3000)
    lock = dirs[0] / ".oauth_refresh.lock"
    lock.mkdir()  # fresh: a CLI session is refreshing right now
    out = credsync(["refresh", "--config", str(config)])
    assert out.returncode == 1 and out.stdout.startswith("busy")
    assert server.stats().token_requests == 0 and lock.exists()


def test_the_agent_refreshes_on_time_with_the_real_clock(tmp_path: Path,
                                                         server: OAuthServer) -> None:
    server.set_lifetimes(8)
    config, dirs, cred = setup_world(tmp_path, server, 8, at_fraction=0.5, client_window_s=0,
                                     margin_s=0, nominal_lifetime_s=8)
    start = time.time()
    agent = AgentProcess(config)
    try:
        agent.wait_started(tmp_path / "state")
        wait_for(lambda: server.stats().token_requests >= 1, 15, "the first refresh")
        took = time.time() - start
        # due at 50 % of 8 s after issue; allow for process start-up
        assert 3.0 <= took <= 7.0, took
        wait_for(lambda: all((c := file_cred(d)) is not None and c != cred for d in dirs), 5,
                 "every dir holds the new token")
        assert server.stats().invalid_grants == 0
    finally:
        agent.stop()
