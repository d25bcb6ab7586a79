"""The doctor's checks as functions of their collaborators: a fake clock, a fixed endpoint
answer, a fixed notification probe, an installer with a recorded service manager."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.cli.doctor import render, to_json
from agent.cli.status import Status, StoreStatus
from agent.clock import FakeClock
from agent.config import NotifySection
from agent.doctor import Check, Level, exit_code
from agent.doctor.login import store_checks
from agent.doctor.network import clock_check, endpoint_check
from agent.doctor.system import keychain_checks, login_item_checks, notify_checks
from agent.install.installer import Installer
from agent.notify.notifier import ProbeResult
from agent.refresh.http import EndpointAnswer
from agent.stores.macos.foreign import Ownership, fix_text
from agent.stores.macos.identity import KeychainIdentity


class Probe:
    def __init__(self, reachable: bool, detail: str = "") -> None:
        self.result = ProbeResult(reachable, detail)

    def check(self) -> ProbeResult:
        return self.result


class FixedEndpoint:
    def __init__(self, answer: EndpointAnswer) -> None:
        self.answer = answer
        self.urls: list[str] = []

    def check(self, url: str) -> EndpointAnswer:
        self.urls.append(url)
        return self.answer


def status(stores: list[StoreStatus]) -> Status:
    return Status("/c.toml", True, 7, "/state", "ok", None, stores, {}, "running", 1e9)


def test_the_clock_against_the_token_server() -> None:
    clock = FakeClock(1_800_000_000.0)
    answer = EndpointAnswer(True, True, 405, clock.now() - 400)
    assert clock_check(clock, answer).level is Level.FAIL
    assert clock_check(clock, answer).summary == "6 min ahead of the token server"
    assert clock_check(clock, EndpointAnswer(True, True, 405, clock.now() + 90)).level \
        is Level.WARN
    assert clock_check(clock, EndpointAnswer(True, True, 405, clock.now())).level is Level.OK
    assert clock_check(FakeClock(86400.0), None).level is Level.FAIL  # 1970: a dead RTC
    assert "timedatectl set-ntp true" in clock_check(FakeClock(86400.0), None).fix


def test_the_endpoint_over_plain_http_warns_and_refresh_off_sends_nothing() -> None:
    probe = FixedEndpoint(EndpointAnswer(True, False, 405))
    check, _ = endpoint_check("http://127.0.0.1:9/t", True, probe)
    assert check.level is Level.WARN and "without TLS" in check.summary
    off = FixedEndpoint(EndpointAnswer(True, True, 405))
    check, answer = endpoint_check("https://x.example/t", False, off)
    assert check.level is Level.OK and answer is None and off.urls == []


def test_notifications_with_no_server_fail_alone_and_warn_with_a_fallback() -> None:
    down = Probe(False, "no org.freedesktop.Notifications on the session bus")
    env = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    alone = notify_checks(NotifySection(), down, lambda _: None)[0]
    assert alone.level is Level.FAIL and "[notify] command or webhook" in alone.fix
    hooked = notify_checks(NotifySection(webhook="https://hooks.example/s3cret/path"), down,
                           lambda _: None)
    assert hooked[0].level is Level.WARN
    assert hooked[2].summary == "set (https://hooks.example)"  # the secret path never shown
    assert all("s3cret" not in c.summary + c.fix for c in hooked)
    assert notify_checks(NotifySection(), Probe(True), lambda _: None)[0].level is Level.OK \
        or env is None  # the library may see no bus here; the probe is only half of it


def test_a_keychain_without_a_backend_fails_with_the_setting() -> None:
    def broken() -> str:
        raise RuntimeError("no Secret Service")

    check = keychain_checks(True, "linux", broken, status([]))[0]
    assert check.level is Level.FAIL and check.fix.endswith("set [claude] keychain = false")
    assert keychain_checks(False, "linux", broken, status([]))[0].level is Level.OK


def test_an_item_another_program_made_fails_with_the_foreign_fix() -> None:
    ident = KeychainIdentity("Claude Code-credentials", "me", Path("/Users/me/.claude"))
    blocker = fix_text(ident, Ownership(("teamid:ABC",), ("/usr/bin/python3",)))
    row = StoreStatus("keychain:Claude Code-credentials", "keychain", "x", "in-sync", "ab",
                      None, "", "holder", blocker)
    check = store_checks(status([row]))[0]
    assert check.level is Level.FAIL and "made by /usr/bin/python3" in check.summary
    assert check.fix.startswith("run `security set-generic-password-partition-list -S "
                                'apple-tool:,apple: -a me -s "Claude Code-credentials"`')


Runner = Callable[[Sequence[str]], tuple[int, str, str]]


def recorded(answers: dict[str, tuple[int, str, str]]) -> tuple[Runner, list[tuple[str, ...]]]:
    calls: list[tuple[str, ...]] = []

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        calls.append(tuple(argv))
        return answers.get(argv[2] if len(argv) > 2 else "", (0, "", ""))
    return run, calls


def installer(tmp_path: Path, config: Path | None) -> Installer:
    run, _ = recorded({})
    return Installer(run, tmp_path, "linux", ["/opt/venv/bin/python", "-m", "agent.cli", "run"],
                     tmp_path / "log", config, config_home=tmp_path / ".config")


def test_the_login_item_the_same_config_and_another_one(tmp_path: Path) -> None:
    mine = installer(tmp_path, tmp_path / "a.toml")
    assert login_item_checks({"installed": False, "detail": "not installed"}, mine,
                             "`credsync install`")[0].fix == "`credsync install`"
    mine.install()
    item = {"installed": True, "path": str(mine.path), "enabled": True, "active": True}
    same = login_item_checks(item, mine, "`credsync install`")
    assert [c.level for c in same] == [Level.OK, Level.OK]
    other = installer(tmp_path, tmp_path / "b.toml")
    moved = login_item_checks(item, other, "`credsync install --config b.toml`")
    assert moved[1] == Check("login item config", Level.WARN, "it runs another program, config "
                             "file or environment than this one",
                             "`credsync install --config b.toml`")
    disabled = login_item_checks({**item, "enabled": False}, mine, "`credsync install`")
    assert disabled[0].level is Level.FAIL


def test_render_and_exit_code() -> None:
    checks = [Check("a", Level.OK, "fine"), Check("b", Level.WARN, "meh", "do x"),
              Check("c", Level.FAIL, "bad", "do y")]
    assert render(checks).splitlines() == ["ok    a: fine", "warn  b: meh  fix: do x",
                                           "fail  c: bad  fix: do y", "1 ok, 1 warn, 1 fail"]
    assert exit_code(checks) == 1 and exit_code(checks[:2]) == 0
    assert to_json(checks)["exit"] == 1 and to_json(checks[:1])["fail"] == 0
