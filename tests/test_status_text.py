"""``credsync status``'s text view (F15): the exact screen for a healthy setup and for each
problem, plain words, relative times, a next step for everything not fine, and nothing from
outside can forge a row."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli.status import Status, StoreStatus, iso, render_text
from agent.cli.statustext import SECTIONS, TextSection, duration, render, span, when
from agent.credential import Credential
from agent.mcp import McpEntry, McpKey
from agent.sim.server import OAuthServer
from tests.agentproc import credsync, write_config
from tests.factories import write_doc

NOW = 1_800_000_000.0
CONFIG = "/home/u/.config/credsync/config.toml"
UNIT = "/home/u/.config/systemd/user/credsync.service"
LOG = "/home/u/.local/state/credsync/log/credsync.log"
LOGIN = Credential.build("sk-ant-oat01-test-access", "sk-ant-ort01-test-refresh",
                         int((NOW + 5 * 3600 + 12 * 60) * 1000))
FP = LOGIN.fingerprint


def row(name: str, state: str = "in-sync", detail: str = "", kind: str = "claude-file",
        role: str = "holder", cred: Credential | None = LOGIN) -> StoreStatus:
    in_step = state in ("in-sync", "stale") and cred is not None
    return StoreStatus(name, kind, "/x", state, cred.fingerprint if in_step and cred else None,
                       iso(cred.expires_at) if in_step and cred else None, detail, role)


def healthy(**changes: object) -> Status:
    status = Status(
        CONFIG, True, 4242, "/state", "ok", LOGIN,
        [row("file:/home/u/.claude"), row("file:/home/u/work/.claude"),
         row("keychain", kind="keychain", role="copy")],
        {"refresh": {"enabled": True, "lifetime_s": 28800.0, "lifetime_source": "last refresh",
                     "last_refresh_at": iso(NOW - 2 * 3600 - 48 * 60),
                     "next_refresh_at": iso(NOW + 3 * 3600 + 36 * 60)},
         "login_item": {"installed": True, "path": UNIT, "enabled": True, "active": True,
                        "detail": "", "log_file": LOG}},
        "running", NOW)
    for key, value in changes.items():
        setattr(status, key, value)
    return status


HEALTHY = f"""\
config      {CONFIG}
agent       running (pid 4242)
login       ok, {FP}, expires in 5 h 12 min
refresh     on, last 2 h 48 min ago, next in 3 h 36 min, lifetime 8 h (last refresh)
login item  installed, enabled, running: {UNIT}
log file    {LOG}

stores                       state    login       expires        kind
  file:/home/u/.claude       in-sync  {FP}  in 5 h 12 min  Claude Code's own
  file:/home/u/work/.claude  in-sync  {FP}  in 5 h 12 min  Claude Code's own
  keychain                   in-sync  {FP}  in 5 h 12 min  credsync's copy"""


def test_a_healthy_setup() -> None:
    assert render_text(healthy()) == HEALTHY
    assert "next step" not in render_text(healthy())


def _screen(status: Status) -> list[str]:
    return render_text(status).splitlines()


def _steps(status: Status) -> list[str]:
    return [x for x in _screen(status) if x.startswith("next step: ")]


def no_login() -> Status:
    return healthy(login_state="none", best=None, stores=[
        row("file:/home/u/.claude", "missing", "no credentials file", cred=None)],
        extra={"login": {"reason": "no login in any config dir"}})


def test_no_login() -> None:
    screen = _screen(no_login())
    assert screen[2:4] == ["login       none", "why         no login in any config dir"]
    assert screen[-4:] == [
        "stores                  state    login  expires  kind",
        "  file:/home/u/.claude  missing  -      -        Claude Code's own  no credentials file",
        "",
        "next step: no valid login in any store: log in with `claude` (or `claude auth login`)"]


def test_an_expired_login() -> None:
    old = Credential.build("sk-ant-oat01-old", "sk-ant-ort01-old", int((NOW - 180) * 1000))
    status = healthy(login_state="expired", best=old, running=False, pid=None,
                     agent_state="not running",
                     stores=[row("file:/home/u/.claude", cred=old)])
    screen = _screen(status)
    assert screen[1:3] == ["agent       not running",
                           f"login       expired, {old.fingerprint}, expires 3 min ago"]
    assert _steps(status) == [
        "next step: the login has expired: run `credsync refresh`, or start the agent",
        "next step: start the agent: `credsync install` (at every login) or `credsync run`"]


def test_a_relogin_with_an_active_alert() -> None:
    status = healthy(login_state="relogin-required", best=None,
                     stores=[row("file:/home/u/.claude", "cleared", "cleared by the CLI",
                                 cred=None)])
    status.extra["alert"] = {"event": "relogin-required", "title": "Claude Code: log in again",
                             "since": iso(NOW - 25 * 60), "config_dirs": ["/home/u/.claude"]}
    screen = _screen(status)
    assert "alert       Claude Code: log in again (since 25 min ago; /home/u/.claude)" in screen
    assert _steps(status) == [
        "next step: the refresh was refused: log in again with `claude auth login`"]


def test_a_stopped_agent() -> None:
    status = healthy(agent_state="stopped")
    assert _screen(status)[1] == "agent       stopped (pid 4242)"
    assert _steps(status) == [
        "next step: the agent is stopped (SIGSTOP, a debugger): `kill -CONT 4242`"]


def test_an_agent_not_responding() -> None:
    assert _steps(healthy(agent_state="not responding")) == [
        "next step: the agent has not finished a round for minutes: `kill 4242`, then start it "
        "again (`credsync run`, or `systemctl --user restart credsync.service`)"]


def test_a_locked_keychain_and_a_stale_dir() -> None:
    older = Credential.build("sk-ant-oat01-older", "sk-ant-ort01-older", int((NOW + 60) * 1000))
    status = healthy(stores=[
        row("file:/home/u/.claude"), row("file:/home/u/work/.claude", "stale", cred=older),
        row("keychain", "error", "keychain read: KeyringLocked: collection is locked",
            kind="keychain", role="copy", cred=None)])
    screen = _screen(status)
    assert screen[7:11] == [
        "stores                       state    login       expires        kind",
        f"  file:/home/u/.claude       in-sync  {FP}  in 5 h 12 min  Claude Code's own",
        f"  file:/home/u/work/.claude  stale    {older.fingerprint}  in 1 min       Claude "
        "Code's own",
        "  keychain                   error    -           -              credsync's copy    "
        "keychain read: KeyringLocked: collection is locked"]
    assert _steps(status) == [
        "next step: file:/home/u/work/.claude is stale: the agent fixes it within a second",
        "next step: keychain: keychain read: KeyringLocked: collection is locked"]


def test_a_refresh_that_keeps_failing_and_no_login_item() -> None:
    status = healthy()
    status.extra["refresh"].update(state="offline", reason="ConnectError: no route")
    status.extra["login_item"] = {"installed": False, "path": UNIT, "enabled": False,
                                  "active": None, "detail": "not installed", "log_file": LOG}
    screen = _screen(status)
    assert screen[3] == ("refresh     on, last try offline (ConnectError: no route), last 2 h "
                         "48 min ago, next in 3 h 36 min, lifetime 8 h (last refresh)")
    assert screen[4] == "login item  not installed"
    assert _steps(status) == [
        "next step: the last refresh did not get through; credsync retries by itself: run "
        "`credsync doctor` to check the token endpoint",
        "next step: `credsync install` starts the agent at every login"]


def test_mcp_connectors_per_dir() -> None:
    valid = McpEntry("valid", "github", "0a1b2c3d4e", NOW + 3600, True)
    status = healthy(mcp=[
        McpKey("github|1", "github", (("/home/u/.claude", valid),
                                      ("/home/u/work/.claude", McpEntry("cleared", "github")))),
        McpKey("linear|2", "linear", (("/home/u/.claude", McpEntry("signing-in", "linear")),
                                      ("/home/u/work/.claude", McpEntry("missing"))))])
    screen = _screen(status)
    start = screen.index("") + 1
    start = screen.index("", start) + 1
    assert screen[start:start + 3] == [
        "mcp connectors  /home/u/.claude   /home/u/work/.claude",
        "  github        valid 0a1b2c3d4e  cleared",
        "  linear        signing-in        missing"]
    assert _steps(status) == [
        "next step: mcp github in /home/u/work/.claude is cleared: sign in to it again: /mcp "
        "in a Claude Code session of that dir"]


def test_a_new_section_is_one_more_entry() -> None:
    # How the cluster rows will come in: a TextSection appended, the rest untouched.
    cluster = TextSection(lambda s: ["cluster     3 machines, this one holds the claim"],
                          lambda s: ["cluster: nothing to do"])
    text = render(healthy(), [*SECTIONS, cluster])
    assert text.startswith(render_text(healthy()))
    assert text.endswith("\n\ncluster     3 machines, this one holds the claim\n\n"
                         "next step: cluster: nothing to do")


def test_sections_other_parts_add_are_plain_words() -> None:
    status = healthy()
    status.extra["example"] = {"members": 3, "leader": True, "note": "", "lag_s": 0.5}
    assert _screen(status)[-1] == "example     members 3, leader yes, lag_s 0.5"


@pytest.mark.parametrize(("seconds", "words"), [
    (28800.0, "8 h"), (9000, "2.5 h"), (5400, "90 min"), (45, "45 s"), (0.5, "0.5 s"),
    (3 * 86400, "3 d"), (120, "2 min")])
def test_durations(seconds: float, words: str) -> None:
    assert duration(seconds) == words


@pytest.mark.parametrize(("delta", "words"), [
    (5 * 3600 + 12 * 60 + 30, "in 5 h 12 min"), (-180, "3 min ago"), (0.2, "now"),
    (7200, "in 2 h"), (-45, "45 s ago"), (3 * 86400 + 4 * 3600, "in 3 d 4 h"),
    (2 * 86400, "in 2 d")])
def test_relative_times(delta: float, words: str) -> None:
    assert when(NOW + delta, NOW) == words
    if words != "now":
        assert span(delta) == words.removeprefix("in ").removesuffix(" ago")


def test_control_characters_in_names_and_details_cannot_forge_rows() -> None:
    forged = "file:/home/u/evil\n  file:/home/u/.claude  in-sync     abc  2030-01-01T00:00:00Z"
    status = healthy(stores=[row(forged, "error", "bad\r\x1b[32mfine\u202e", cred=None),
                             row("file:/home/u/.claude", "missing", "no file", cred=None)])
    text = render_text(status)
    lines = text.splitlines()
    stores = lines[lines.index("") + 1:]
    assert stores[1].startswith("  file:/home/u/evil\\n  file:/home/u/.claude  in-sync")
    assert stores[1].endswith("bad\\r\\x1b[32mfine\\u202e")
    assert stores[2].startswith("  file:/home/u/.claude ")
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text


def test_a_keychain_without_a_session_bus_gets_a_hint() -> None:
    detail = ("keychain read: SecretServiceNotAvailableException: Environment variable "
              "DBUS_SESSION_BUS_ADDRESS is unset")
    status = healthy(stores=[row("keychain", "error", detail, "keychain", "copy", None)])
    hinted = ("is unset (no desktop session: run inside a desktop login, or set "
              "[claude] keychain = false)")
    assert _screen(status)[8].endswith(hinted)
    assert _steps(status)[-1].endswith(hinted)


def test_no_token_in_any_screen() -> None:
    screens: list[Callable[[], Status]] = [healthy, no_login]
    for make in screens:
        text = render_text(make())
        assert LOGIN.access_token not in text and LOGIN.refresh_token not in text


@pytest.mark.integration
def test_status_of_a_config_dir_named_with_a_newline_keeps_one_row_per_store(
        tmp_path: Path) -> None:
    with OAuthServer(access_lifetime_s=8 * 3600) as server:
        good, odd = tmp_path / "good", tmp_path / "odd\n  keychain  in-sync"
        write_doc(good, {"claudeAiOauth": server.issue_login()})
        odd.mkdir()
        config = write_config(tmp_path / "config.toml", [good, odd], tmp_path / "state",
                              keychain=False, refresh={"token_url": server.url})
        out = credsync(["status", "--config", str(config)])
        data = json.loads(credsync(["status", "--json", "--config", str(config)]).stdout)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, x in enumerate(lines) if x.startswith("stores "))
    stores = lines[header + 1:lines.index("", header)]
    assert len(stores) == len(data["stores"]) == 2, out.stdout
    assert any("odd\\n  keychain  in-sync" in line for line in stores)


def _cluster(state: str = "online", **more: object) -> dict[str, object]:
    return {"state": state, "offline_since": None, "reason": "",
            "member": {"name": "laptop", "member_id": "aaaaaaaaaaaa"},
            "redis": "rediss://cs@redis.example.com:6380/0", "login_id": "0123456789abcdef",
            "generation": {"gen": 7, "version": 9, "fingerprint": FP, "by": "bbbbbbbbbbbb"},
            "offset_s": -0.2, "last_propagation_ms": 3.4, "last_heartbeat_at": iso(NOW - 12),
            "members": [
                {"name": "laptop", "member_id": "aaaaaaaaaaaa", "seen_at": iso(NOW - 12),
                 "offset_s": -0.2, "gen": 7, "propagation_ms": 3.4},
                {"name": "devbox", "member_id": "bbbbbbbbbbbb", "seen_at": iso(NOW - 3),
                 "offset_s": 31.0, "gen": 7, "propagation_ms": None}], **more}


CLUSTER_ONLINE = f"""\
cluster     online, Redis rediss://cs@redis.example.com:6380/0
machine     laptop (aaaaaaaaaaaa), clock -0.2 s off Redis
generation  7 ({FP}, from devbox (bbbbbbbbbbbb))
propagation 3.4 ms (the last login another machine published)
members:
  laptop (aaaaaaaaaaaa)  seen 12 s ago  clock -0.2 s off Redis   gen 7
  devbox (bbbbbbbbbbbb)  seen 3 s ago   clock +31.0 s off Redis  gen 7"""


def test_a_cluster_member_online() -> None:
    status = healthy()
    status.extra["cluster"] = _cluster()
    text = render_text(status)
    assert text == HEALTHY + "\n\n" + CLUSTER_ONLINE
    assert "next step" not in text


def test_a_cluster_member_offline_says_since_when_and_what_to_do() -> None:
    status = healthy()
    status.extra["cluster"] = _cluster("offline", offline_since=iso(NOW - 7 * 60),
                                       reason="cannot reach Redis at rediss://cs@redis..")
    screen = _screen(status)
    line = next(x for x in screen if x.startswith("cluster "))
    assert line == (f"cluster     offline since {iso(NOW - 7 * 60)} (7 min ago: cannot reach "
                    "Redis at rediss://cs@redis..), Redis rediss://cs@redis.example.com:6380/0")
    assert _steps(status) == [
        "next step: the cluster's Redis cannot be reached, so no machine refreshes (sessions "
        "keep their token): check that Redis runs and `credsync cluster status`"]


def test_codex_only_the_claude_side_off() -> None:
    status = healthy(login_state="off", best=None, stores=[
        row("codex:/home/u/.codex", kind="codex-file")], extra={
        "refresh": {"enabled": True, "lifetime_s": 28800.0, "lifetime_source": "nominal"},
        "login": {"reason": "no login in any config dir"},
        "codex": {"login": "ok", "fingerprint": FP, "expires_at": iso(NOW + 3600),
                  "refresh": {"next_refresh_at": iso(NOW + 1800)},
                  "homes": ["/home/u/.codex"]}})
    screen = _screen(status)
    assert screen[:4] == ["config      " + CONFIG, "agent       running (pid 4242)",
                          "login       off",
                          f"codex       ok, {FP}, expires in 1 h, next refresh in 30 min "
                          "(1 home)"]
    assert f"  codex:/home/u/.codex  in-sync  {FP}  in 5 h 12 min  Codex's own" in screen
    assert _steps(status) == []  # off on purpose, and Codex is fine: nothing to do
