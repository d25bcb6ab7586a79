"""The Codex side from the command line, as real processes: ``credsync status`` lists each
home as a store with the Codex login's line, ``credsync token --codex`` prints a valid access
token (refreshing once, under Codex's write locks, when it is due), and with the Claude side
off (``[claude] config_dirs = []``) the Claude commands say so in one line."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.codex.tokens import credential_from_auth, parse_time
from agent.sim.codex_store import login_document
from agent.sim.server import OAuthServer
from tests.agentproc import credsync, toml_value

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer(style="codex", access_lifetime_s=3600) as srv:
        yield srv


def setup(tmp: Path, server: OAuthServer, lifetime_s: float | None = None) -> tuple[Path, Path]:
    home = tmp / "codex"
    home.mkdir()
    if lifetime_s is not None:
        server.set_lifetimes(lifetime_s)
    doc = login_document(server.issue_login(), 0)
    doc["future_field"] = {"kept": True}
    (home / "auth.json").write_text(json.dumps(doc, indent=2))
    os.chmod(home / "auth.json", 0o600)
    config = tmp / "config.toml"
    config.write_text("\n".join([
        "[agent]", f"state_dir = {toml_value(tmp / 'state')}", "[claude]", "config_dirs = []",
        "keychain = false", "[refresh]", "jitter = 0", "[codex]",
        f"homes = [{toml_value(home)}]", f"token_url = {toml_value(server.url)}",
        f"client_id = {toml_value(server.client_id)}", "keychain = false", ""]))
    return home, config


def env(tmp: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("CREDSYNC_", "CODEX_", "CLAUDE_"))}
    out["HOME"] = str(tmp)
    return out


def login(home: Path):  # type: ignore[no-untyped-def]
    return credential_from_auth(json.loads((home / "auth.json").read_text()))


def test_status_lists_the_codex_home_and_token_prints_its_access_token(
        tmp_path: Path, server: OAuthServer) -> None:
    home, config = setup(tmp_path, server)
    cred = login(home)
    shown = credsync(["status", "--config", str(config)], env=env(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert f"codex:{home}" in shown.stdout and "codex       ok, " + cred.fingerprint \
        in shown.stdout
    assert "login       off" in shown.stdout and "claude auth login" not in shown.stdout
    js = json.loads(credsync(["status", "--json", "--config", str(config)],
                             env=env(tmp_path)).stdout)
    assert js["extra"]["codex"]["login"] == "ok"
    for out in (shown.stdout, shown.stderr, json.dumps(js)):
        assert cred.access_token not in out and cred.refresh_token not in out
    token = credsync(["token", "--codex", "--config", str(config)], env=env(tmp_path))
    assert token.returncode == 0 and token.stdout == cred.access_token + "\n", token.stderr
    assert server.stats().token_requests == 0


def test_token_codex_refreshes_a_due_login_once_and_keeps_every_key(
        tmp_path: Path, server: OAuthServer) -> None:
    home, config = setup(tmp_path, server, lifetime_s=200)  # inside Codex's 5-minute window
    old = login(home)
    before = json.loads((home / "auth.json").read_text())
    token = credsync(["token", "--codex", "--config", str(config)], env=env(tmp_path))
    assert token.returncode == 0, token.stderr
    after = json.loads((home / "auth.json").read_text())
    new = credential_from_auth(after)
    assert new is not None and new.access_token == token.stdout.strip()
    assert new.refresh_token != old.refresh_token and server.check_access(new.access_token)
    assert after["future_field"] == {"kept": True} and after["OPENAI_API_KEY"] is None
    assert parse_time(after["last_refresh"]) > parse_time(before["last_refresh"])  # type: ignore
    assert stat.S_IMODE(os.stat(home / "auth.json").st_mode) == 0o600
    assert (home / "auth.lock").exists()  # written under Codex's own lock
    again = credsync(["token", "--codex", "--config", str(config)], env=env(tmp_path))
    assert again.stdout == token.stdout
    stats = server.stats()
    assert stats.token_requests == 1 and stats.invalid_grants == 0


def test_with_the_claude_side_off_claude_s_token_says_so_in_one_line(
        tmp_path: Path, server: OAuthServer) -> None:
    _, config = setup(tmp_path, server)
    done = credsync(["token", "--config", str(config)], env=env(tmp_path))
    assert done.returncode != 0 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "config_dirs = []" in lines[0] and "--codex" in lines[0]


def test_doctor_has_codex_lines_with_their_fixes_and_no_token(
        tmp_path: Path, server: OAuthServer) -> None:
    home, config = setup(tmp_path, server)
    cred = login(home)
    e = {**env(tmp_path), "CODEX_HOME": str(tmp_path / "elsewhere")}
    done = credsync(["doctor", "--config", str(config)], env=e)
    lines = done.stdout.splitlines()
    assert any(line.startswith("ok") and "codex login" in line and cred.fingerprint in line
               for line in lines), done.stdout
    assert any(line.startswith("ok") and f"Codex login in {home}" in line for line in lines)
    assert any("codex endpoint" in line for line in lines)
    # sessions from this shell use another CODEX_HOME: named, with the setting that fixes it
    wrong = [i for i, line in enumerate(lines) if "codex environment" in line]
    assert wrong and lines[wrong[0]].startswith("fail"), done.stdout
    assert "[codex] homes" in done.stdout
    assert "claude auth login" not in done.stdout  # the Claude side is off on purpose
    (home / "auth.json").unlink()  # logged out (Codex's logout deletes the file)
    after = credsync(["doctor", "--config", str(config)], env=env(tmp_path))
    assert after.returncode == 1 and "codex login" in after.stdout
    for out in (done.stdout, done.stderr, after.stdout, after.stderr):
        assert cred.access_token not in out and cred.refresh_token not in out


def test_status_of_a_codex_only_agent_says_it_runs(tmp_path: Path, server: OAuthServer) -> None:
    from tests.agentproc import AgentProcess, wait_for

    _, config = setup(tmp_path, server)
    agent = AgentProcess(config, env(tmp_path))
    try:
        def running() -> bool:
            out = credsync(["status", "--json", "--config", str(config)], env=env(tmp_path))
            return json.loads(out.stdout)["agent"]["state"] == "running"
        wait_for(running, 20, "status to see the Codex-only agent running", interval_s=0.3)
    finally:
        agent.stop()


def setup_two_accounts(tmp: Path, server: OAuthServer) -> tuple[list[Path], Path]:
    """Three homes: the first and third on one account, the second on another."""
    homes = [tmp / f"codex{i}" for i in range(3)]
    logins = {acct: server.issue_login(account_id=acct) for acct in ("acct-a", "acct-b")}
    for home, acct in zip(homes, ("acct-a", "acct-b", "acct-a"), strict=True):
        home.mkdir()
        (home / "auth.json").write_text(json.dumps(login_document(logins[acct], 0), indent=2))
        os.chmod(home / "auth.json", 0o600)
    config = tmp / "config.toml"
    config.write_text("\n".join([
        "[agent]", f"state_dir = {toml_value(tmp / 'state')}", "[claude]", "config_dirs = []",
        "keychain = false", "[refresh]", "jitter = 0", "[codex]",
        f"homes = [{', '.join(toml_value(h) for h in homes)}]",
        f"token_url = {toml_value(server.url)}", f"client_id = {toml_value(server.client_id)}",
        "keychain = false", ""]))
    return homes, config


def test_homes_of_two_accounts_are_shown_and_served_each_as_its_own_login(
        tmp_path: Path, server: OAuthServer) -> None:
    homes, config = setup_two_accounts(tmp_path, server)
    a, b = login(homes[0]), login(homes[1])
    shown = credsync(["status", "--config", str(config)], env=env(tmp_path))
    assert shown.returncode == 0, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if line.startswith("codex ")]
    assert len(rows) == 2, shown.stdout  # a line per account, naming its homes
    assert rows[0].startswith(f"codex       ok, {a.fingerprint}, expires in ")
    assert rows[0].endswith(f"({homes[0]}, {homes[2]})") and "next refresh in " in rows[0]
    assert rows[1].startswith(f"codex       ok, {b.fingerprint}, expires in ")
    assert rows[1].endswith(f"({homes[1]})") and "next refresh in " in rows[1]
    assert "stale" not in shown.stdout  # each home is in step with its own account's login
    js = json.loads(credsync(["status", "--json", "--config", str(config)],
                             env=env(tmp_path)).stdout)
    assert [acct["homes"] for acct in js["extra"]["codex_accounts"]] == \
        [[str(homes[0]), str(homes[2])], [str(homes[1])]]
    assert js["extra"]["codex"] == js["extra"]["codex_accounts"][0]
    assert {s["state"] for s in js["stores"]} == {"in-sync"}
    first = credsync(["token", "--codex", "--config", str(config)], env=env(tmp_path))
    assert first.stdout == a.access_token + "\n", first.stderr
    other = credsync(["token", "--codex", "--config", str(config)],
                     env={**env(tmp_path), "CODEX_HOME": str(homes[1])})
    assert other.stdout == b.access_token + "\n", other.stderr
    doctor = credsync(["doctor", "--config", str(config)], env=env(tmp_path))
    logins = [line for line in doctor.stdout.splitlines() if "codex login (" in line]
    assert len(logins) == 2 and all(line.startswith("ok") for line in logins), doctor.stdout
    assert str(homes[1]) in logins[1] and b.fingerprint in logins[1]
    for out in (shown.stdout, json.dumps(js), doctor.stdout):
        for cred in (a, b):
            assert cred.access_token not in out and cred.refresh_token not in out
    assert server.stats().token_requests == 0


def test_a_due_login_of_the_second_account_is_refreshed_in_its_homes_only(
        tmp_path: Path, server: OAuthServer) -> None:
    server.set_lifetimes(200)  # inside Codex's 5-minute window: due
    homes, config = setup_two_accounts(tmp_path, server)
    a, b = login(homes[0]), login(homes[1])
    done = credsync(["token", "--codex", "--config", str(config)],
                    env={**env(tmp_path), "CODEX_HOME": str(homes[1])})
    assert done.returncode == 0, done.stderr
    new_b = login(homes[1])
    assert new_b is not None and new_b.access_token == done.stdout.strip() != b.access_token
    assert login(homes[0]) == a and login(homes[2]) == a  # the other account's homes untouched
    stats = server.stats()
    assert stats.token_requests == 1 and stats.invalid_grants == 0


def test_a_home_that_changes_account_under_a_running_agent_asks_for_a_restart(
        tmp_path: Path, server: OAuthServer) -> None:
    from tests.agentproc import AgentProcess, wait_for

    homes, config = setup_two_accounts(tmp_path, server)
    agent = AgentProcess(config, env(tmp_path))
    try:
        def status() -> dict[str, Any]:
            out = credsync(["status", "--json", "--config", str(config)], env=env(tmp_path))
            return dict(json.loads(out.stdout))

        wait_for(lambda: all(a["agent"] == "running"
                             for a in status()["extra"]["codex_accounts"]),
                 20, "both accounts' lanes running", interval_s=0.3)
        third = server.issue_login(account_id="acct-c")  # `codex login` to a third account
        (homes[2] / "auth.json").write_text(json.dumps(login_document(third, 0), indent=2))
        wait_for(lambda: "another Codex account" in agent.output(), 10,
                 "the agent to say the home changed account", interval_s=0.2)
        shown = credsync(["status", "--config", str(config)], env=env(tmp_path)).stdout
        assert "agent       running" in shown, shown
        assert "a Codex home has changed account since the agent started: restart it" in shown
        doctor = credsync(["doctor", "--config", str(config)], env=env(tmp_path)).stdout
        assert any(line.startswith("warn") and "codex accounts" in line
                   for line in doctor.splitlines()), doctor
        assert json.loads((homes[2] / "auth.json").read_text())["tokens"]["account_id"] == \
            "acct-c"  # the agent never wrote acct-a's login over it
    finally:
        agent.stop()
