"""The defects of /work/shared/notes/defects.md (F1, F2, F3, F5, F6, F8), each reproduced for real.

Real ``credsync`` processes, real files and inotify, the simulated OAuth server over HTTP. Short
token lifetimes keep the waits for "this does not happen" short; every wait is on a condition (or
on a point in time) with a deadline, never a bare sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.credential import Credential, fingerprint_of, parse_document
from agent.ledger import Ledger, scope_dir
from agent.sim.server import OAuthServer
from tests.agentproc import REPO, AgentProcess, credsync, wait_for, write_config
from tests.factories import CLEARED, read_doc, write_doc

pytestmark = pytest.mark.integration

LIFETIME_S = 4


@pytest.fixture
def fast() -> Iterator[OAuthServer]:
    """Access tokens that live 4 s: a refresh is due 3.2 s after each one is issued."""
    with OAuthServer(access_lifetime_s=LIFETIME_S) as srv:
        yield srv


@pytest.fixture
def slow() -> Iterator[OAuthServer]:
    """8 h access tokens: nothing falls due during a test."""
    with OAuthServer() as srv:
        yield srv


def fast_refresh(server: OAuthServer) -> dict[str, Any]:
    return {"token_url": server.url, "nominal_lifetime_s": LIFETIME_S, "client_window_s": 0,
            "margin_s": 0, "jitter": 0}


def doc_of(oauth: Mapping[str, Any], **other: Any) -> dict[str, Any]:
    return {"claudeAiOauth": dict(oauth), **other}


def cred_of(oauth: Mapping[str, Any]) -> Credential:
    cred = parse_document(json.dumps(doc_of(oauth)).encode())[0].valid
    assert cred is not None
    return cred


def file_cred(d: Path) -> Credential | None:
    try:
        return parse_document((d / ".credentials.json").read_bytes())[0].valid
    except FileNotFoundError:
        return None


def status_json(config: Path | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    args = ["status", "--json"] + (["--config", str(config)] if config else [])
    out = credsync(args, env)
    assert out.stdout, out.stderr
    obj: dict[str, Any] = json.loads(out.stdout)
    return obj


def login_state(config: Path | None, env: Mapping[str, str] | None = None) -> str:
    return str(status_json(config, env)["login"]["state"])


def journal_marks(state: Path) -> list[str]:
    try:
        return [line[:1] for line in (state / "journal").read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def active_alert(scope: Path) -> object:
    try:
        return json.loads((scope / "alerts.json").read_text()).get("episode")
    except FileNotFoundError:
        return None


def pass_time(seconds: float, what: str) -> None:
    """Let ``seconds`` of wall-clock time go by (to show that something did NOT happen)."""
    until = time.time() + seconds
    wait_for(lambda: time.time() > until, seconds + 5, what)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def start(agents: list[AgentProcess], config: Path, state: Path,
          env: Mapping[str, str] | None = None) -> AgentProcess:
    agent = AgentProcess(config, env)
    agents.append(agent)
    agent.wait_started(state)
    return agent


# ----- F1: a deliberate logout ends the login ------------------------------------------------

@pytest.mark.parametrize("how", ["file-removed", "claudeAiOauth-removed"])
def test_f1_logout_in_every_dir_ends_the_login(tmp_path: Path, fast: OAuthServer,
                                                agents: list[AgentProcess], how: str) -> None:
    dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
    sink = tmp_path / "sinks" / "s1" / "token"
    state = tmp_path / "state"
    login = fast.issue_login()
    for d in dirs:
        write_doc(d, doc_of(login, mcpOAuth={"srv": {"accessToken": "keep-me"}}))
    config = write_config(tmp_path / "config.toml", dirs, state, keychain=False,
                          refresh=fast_refresh(fast),
                          sinks=[{"path": sink, "format": "access-token"}])
    agent = start(agents, config, state)
    # the login is alive: the agent refreshes it and writes the new token everywhere
    wait_for(lambda: fast.stats().token_requests >= 1, 10, "the first refresh")
    wait_for(lambda: (c := file_cred(dirs[0])) is not None and c.access_token != login[
        "accessToken"] and all(file_cred(d) == c for d in dirs)
        and sink.exists() and c.access_token in sink.read_text(), 5, "the refreshed login")
    current = file_cred(dirs[0])
    assert current is not None
    requests = fast.stats().token_requests

    for d in dirs:  # the next refresh is 3.2 s away: log out well before it
        if how == "file-removed":
            (d / ".credentials.json").unlink()
        else:
            write_doc(d, {"mcpOAuth": {"srv": {"accessToken": "keep-me"}}})
    wait_for(lambda: agent.stats(state).get("login") == "logged-out", 5,
             "the agent to see the logout")
    sink_before = (sink.read_text(), sink.stat().st_mtime_ns)

    # past the point the refresh was due, and past the token's expiry: nothing was sent
    pass_time(max(0.0, current.expires_at - time.time()) + 1, "the old token's expiry")
    assert fast.stats().token_requests == requests, agent.output()[-2000:]
    assert (sink.read_text(), sink.stat().st_mtime_ns) == sink_before
    assert agent.stats(state).get("login") == "logged-out"
    assert login_state(config) == "logged-out"

    token = credsync(["token", "--config", str(config)])
    assert token.returncode == 3, token.stdout + token.stderr
    assert token.stdout == ""
    refresh = credsync(["refresh", "--config", str(config)])
    assert refresh.returncode == 3, refresh.stdout + refresh.stderr
    assert fast.stats().token_requests == requests

    for d in dirs:  # nothing was put back
        if how == "file-removed":
            assert not (d / ".credentials.json").exists()
        else:
            assert read_doc(d) == {"mcpOAuth": {"srv": {"accessToken": "keep-me"}}}
    assert agent.proc.poll() is None


# ----- F2: with no config file, each CLAUDE_CONFIG_DIR has a login of its own ----------------

def no_config_env(home: Path, server: OAuthServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLAUDE_", "CREDSYNC_"))
           and (not k.startswith("XDG_") or k == "XDG_CACHE_HOME")}
    env.update(HOME=str(home), CREDSYNC_REFRESH__TOKEN_URL=server.url,
               CREDSYNC_CLAUDE__KEYCHAIN="false", **extra)
    return env


def test_f2_default_config_keeps_each_config_dir_s_login_apart(tmp_path: Path,
                                                               slow: OAuthServer) -> None:
    home = tmp_path / "home"
    claude, work = home / ".claude", home / "work"
    login_b = slow.issue_login()
    login_b["expiresAt"] -= 60_000
    login_a = slow.issue_login()  # expires a minute later than B
    write_doc(work, doc_of(login_b))
    write_doc(claude, doc_of(login_a))
    cred_a, cred_b = cred_of(login_a), cred_of(login_b)
    default_env = no_config_env(home, slow)
    work_env = no_config_env(home, slow, CLAUDE_CONFIG_DIR=str(work))
    assert not (home / ".config" / "credsync" / "config.toml").exists()

    state = home / ".local" / "state" / "credsync"
    agent_json = Ledger(state, [claude]).path / "agent.json"
    log = (tmp_path / "agent.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run"], cwd=REPO, env=default_env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def started() -> bool:
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            try:
                return int(json.loads(agent_json.read_text()).get("rounds", 0)) >= 1
            except (OSError, ValueError):
                return False
        wait_for(started, 15, "the default shell's agent")
        assert status_json(None, default_env)["agent"]["state"] == "running"

        token = credsync(["token"], work_env)
        assert token.returncode == 0, token.stderr
        assert token.stdout == cred_b.access_token + "\n"

        work_status = status_json(None, work_env)
        assert work_status["agent"]["state"] != "running", work_status["agent"]
        assert not work_status["agent"]["running"]

        refresh = credsync(["refresh"], work_env)
        assert refresh.returncode == 0, refresh.stdout + refresh.stderr
        log_ = slow.log()
        assert [r.fingerprint for r in log_] == [fingerprint_of(cred_b.refresh_token)], log_
        assert log_[0].outcome == "rotated"
        new_b = file_cred(work)
        assert new_b is not None and new_b != cred_b
        assert slow.family_of(new_b.access_token) == slow.family_of(cred_b.access_token)
        assert slow.family_of(new_b.access_token) != slow.family_of(cred_a.access_token)
        assert file_cred(claude) == cred_a
        assert slow.stats().invalid_grants == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


# ----- F3: an emptied sink is an output to rewrite, never a refusal --------------------------

def test_f3_emptying_a_sink_twice_is_not_a_refusal(tmp_path: Path, fast: OAuthServer,
                                                   agents: list[AgentProcess]) -> None:
    dirs = [tmp_path / "cfg0"]
    sink = tmp_path / "sinks" / "s1" / "token"
    state = tmp_path / "state"
    write_doc(dirs[0], doc_of(fast.issue_login()))
    config = write_config(tmp_path / "config.toml", dirs, state, keychain=False,
                          refresh=fast_refresh(fast),
                          sinks=[{"path": sink, "format": "access-token"}])
    agent = start(agents, config, state)

    def sink_current() -> bool:
        cred = file_cred(dirs[0])
        return (cred is not None and sink.exists()
                and sink.read_text().strip() == cred.access_token)

    wait_for(sink_current, 5, "the sink written")
    sink.write_text("")
    first = time.time()
    wait_for(sink_current, 5, "the sink rewritten after the first emptying")
    wait_for(lambda: time.time() > first + 1.2, 5, "1.2 s after the first emptying")
    sink.write_text("")
    wait_for(sink_current, 5, "the sink rewritten after the second emptying")
    requests = fast.stats().token_requests

    wait_for(lambda: fast.stats().token_requests > requests, 10,
             "a refresh after the second emptying")
    wait_for(sink_current, 5, "the refreshed token in the sink")
    assert fast.stats().invalid_grants == 0
    assert "!" not in journal_marks(state)
    assert agent.stats(state).get("login") == "ok"
    status = status_json(config)
    assert status["login"]["state"] == "ok"
    assert "alert" not in status.get("extra", {})
    assert active_alert(scope_dir(state)) is None


# ----- F5: a slow writer's new login is never lost -------------------------------------------

@pytest.mark.parametrize("writer", ["held-open-1.5s", "two-chunks-1.5s-apart"])
def test_f5_a_slow_in_place_writer_s_login_reaches_every_dir(
        tmp_path: Path, slow: OAuthServer, agents: list[AgentProcess], writer: str) -> None:
    dirs = [tmp_path / ".claude", tmp_path / "d2"]
    state = tmp_path / "state"
    old = slow.issue_login()
    old["expiresAt"] -= 60_000
    for d in dirs:
        write_doc(d, doc_of(old))
    config = write_config(tmp_path / "config.toml", dirs, state, keychain=False,
                          refresh={"token_url": slow.url, "jitter": 0})
    start(agents, config, state)
    wait_for(lambda: all(file_cred(d) == cred_of(old) for d in dirs), 5, "the old login")
    new = slow.issue_login()
    text = json.dumps(doc_of(new))
    path = dirs[1] / ".credentials.json"

    if writer == "held-open-1.5s":
        with open(path, "w") as fh:  # truncates: the file is empty while the writer waits
            ino = os.fstat(fh.fileno()).st_ino
            pass_time(1.5, "the slow writer's pause")
            fh.write(text)
            fh.flush()
            assert os.stat(path).st_ino == ino, "the file was replaced while it was open"
    else:
        half = len(text) // 2
        with open(path, "w") as fh:
            fh.write(text[:half])
            ino = os.fstat(fh.fileno()).st_ino
        pass_time(1.5, "the pause between the chunks")
        assert os.stat(path).st_ino == ino, \
            f"the half-written file was replaced:\n{agents[0].output()[-2000:]}"
        with open(path, "a") as fh:
            fh.write(text[half:])
    try:
        wait_for(lambda: all(file_cred(d) == cred_of(new) for d in dirs), 5,
                 "the new login in every dir")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; log:\n{agents[0].output()[-3000:]}") from exc
    assert slow.stats().token_requests == 0


def test_f5_a_document_cut_anywhere_reads_as_truncated(slow: OAuthServer) -> None:
    # the longer grace for a write in progress depends on it; a cut inside a string (most of a
    # credential document's bytes) used to read as "not JSON" and got only the short grace
    text = json.dumps(doc_of(slow.issue_login()), indent=2)
    details = {parse_document(text[:n].encode())[0].detail for n in range(len(text))}
    assert details <= {"empty file", "truncated JSON"}, details


# ----- F6: an expiry in year 9999 never wins ---------------------------------------------------

def test_f6_a_year_9999_expiry_loses_to_a_real_login(tmp_path: Path, slow: OAuthServer,
                                                     agents: list[AgentProcess]) -> None:
    claude, w2 = tmp_path / ".claude", tmp_path / "w2"
    w2.mkdir()
    state = tmp_path / "state"
    forever = {**slow.issue_login(), "expiresAt": 253402300799999}
    write_doc(claude, doc_of(forever))
    config = write_config(tmp_path / "config.toml", [claude, w2], state, keychain=False,
                          refresh={"token_url": slow.url, "jitter": 0})
    start(agents, config, state)
    fresh = slow.issue_login()
    write_doc(w2, doc_of(fresh))
    wait_for(lambda: file_cred(claude) == cred_of(fresh) and file_cred(w2) == cred_of(fresh),
             5, "the fresh login in both dirs")
    assert read_doc(claude)["claudeAiOauth"]["expiresAt"] == fresh["expiresAt"]
    refresh = status_json(config)["extra"]["refresh"]
    assert refresh["next_refresh_at"] is not None
    assert not str(refresh["next_refresh_at"]).startswith("9999"), refresh
    assert int(str(refresh["next_refresh_at"])[:4]) <= time.gmtime(time.time() + 86400).tm_year
    assert slow.stats().token_requests == 0


# ----- F8: every command agrees about "re-login required" ------------------------------------

def test_f8a_cleared_again_status_and_token_agree(tmp_path: Path, slow: OAuthServer,
                                                  agents: list[AgentProcess]) -> None:
    dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
    state = tmp_path / "state"
    login = slow.issue_login()
    for d in dirs:
        write_doc(d, doc_of(login))
    good = cred_of(login)
    config = write_config(tmp_path / "config.toml", dirs, state, keychain=False,
                          refresh={"token_url": slow.url, "jitter": 0})
    start(agents, config, state)
    write_doc(dirs[1], {"claudeAiOauth": CLEARED})
    wait_for(lambda: file_cred(dirs[1]) == good, 5, "the cleared file restored")
    write_doc(dirs[1], {"claudeAiOauth": CLEARED})  # cleared again: the server refused it
    wait_for(lambda: login_state(config) == "relogin-required", 10,
             "status to say relogin-required")
    token = credsync(["token", "--config", str(config)])
    assert token.returncode == 3, token.stdout + token.stderr
    assert token.stdout == ""
    assert login_state(config) == "relogin-required"
    assert "!" in journal_marks(state)  # the refusal is where every command reads it
    assert slow.stats().token_requests == 0


def test_f8b_a_past_refresh_token_expiry_the_server_ignores_is_no_relogin(
        tmp_path: Path, slow: OAuthServer, agents: list[AgentProcess]) -> None:
    dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
    state = tmp_path / "state"
    past_ms = int((time.time() - 3600) * 1000)
    login = {**slow.issue_login(), "refreshTokenExpiresAt": past_ms}
    for d in dirs:
        write_doc(d, doc_of(login))
    config = write_config(tmp_path / "config.toml", dirs, state, keychain=False,
                          refresh={"token_url": slow.url, "jitter": 0})
    agent = start(agents, config, state)
    # overdue at start-up: a random 1-10 s wait first (STAMPEDE_DELAY_S, as after a suspend)
    wait_for(lambda: slow.stats().token_requests >= 1, 20, "a refresh of the login")

    def refreshed(d: Path) -> bool:
        try:
            oauth = read_doc(d)["claudeAiOauth"]
        except (OSError, ValueError, KeyError):
            return False
        return bool(oauth.get("accessToken") != login["accessToken"]
                    and oauth.get("refreshTokenExpiresAt") != past_ms)

    wait_for(lambda: all(refreshed(d) for d in dirs), 5, "the refreshed login in every dir")
    for d in dirs:
        ends = read_doc(d)["claudeAiOauth"].get("refreshTokenExpiresAt")
        assert ends is None or ends > time.time() * 1000, ends
    assert slow.stats().invalid_grants == 0
    wait_for(lambda: agent.stats(state).get("login") == "ok", 5, "the agent's verdict ok")
    status = status_json(config)
    assert status["login"]["state"] == "ok", status["login"]
    assert "alert" not in status.get("extra", {}), status["extra"]
    assert active_alert(scope_dir(state)) is None
    token = credsync(["token", "--config", str(config)])
    assert token.returncode == 0, token.stderr
