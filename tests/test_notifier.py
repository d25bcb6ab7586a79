"""Delivery: real dunst on Xvfb, a bus with no server, a real command, a real HTTP server."""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from agent.clock import FakeClock
from agent.config import NotifySection
from agent.notify.alerts import AlertPolicy, AuthObservation, Notice
from agent.notify.notifier import (
    AssumeReachable,
    ChannelReport,
    CommandNotifier,
    DBusNotificationProbe,
    DeliveryReport,
    DesktopNotifier,
    FanoutNotifier,
    Outcome,
    ProbeResult,
    WebhookNotifier,
    build_notifier,
    command_env,
    desktop_problem,
)
from tests.realdesktop import (  # noqa: F401
    RealDesktop,
    Session,
    bus_without_server_fixture,
    environ_overlay,
    read_line,
    real_desktop_fixture,
)

REPO = Path(__file__).resolve().parents[1]
DIRS = ("/home/u/.claude", "/home/u/work/.claude")


def artifacts_dir() -> Path:
    return Path(os.environ.get("CREDSYNC_ARTIFACTS") or REPO / "artifacts")


def notice(title: str = "Claude Code needs a new login: run claude auth login",
           urgency: str = "critical", event: str = "relogin-required") -> Notice:
    body = ("Refresh rejected: credsync cannot renew the Claude login any more. To fix it, run "
            "`claude auth login`.\nAffected config dirs: " + ", ".join(DIRS) + ".")
    return Notice(event, title, body, urgency, DIRS, 1_800_000_000.0)  # type: ignore[arg-type]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- a real HTTP server on 127.0.0.1 ------------------------------------------------------------


@dataclass
class Hook:
    url: str
    received: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    status: int = 204
    hang: threading.Event | None = None  # set: answer; unset: hold the request (a stuck server)


@pytest.fixture
def webhook_server() -> Iterator[Hook]:
    hook = Hook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            payload = json.loads(self.rfile.read(length))
            hook.received.put({"path": self.path, "type": self.headers.get("Content-Type"),
                               "json": payload})
            if hook.hang is not None:
                hook.hang.wait(timeout=10)
            self.send_response(hook.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/SECRET-path-token"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        if hook.hang is not None:
            hook.hang.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


ENV_DUMP = ("import json, os, sys\n"
            "keys = [k for k in os.environ if k.startswith('CREDSYNC_') or 'TOKEN' in k]\n"
            "json.dump({k: os.environ[k] for k in keys}, open(sys.argv[1], 'w'))\n")


def env_dumper(tmp_path: Path) -> tuple[list[str], Path]:
    script, out = tmp_path / "dump_env.py", tmp_path / "env.json"
    script.write_text(ENV_DUMP)
    return [sys.executable, str(script), str(out)], out


# -- fakes for the fan-out's logic ------------------------------------------------------------


class FakeChannel:
    def __init__(self, name: str, outcome: Outcome = Outcome.SENT, boom: bool = False) -> None:
        self.name = name
        self.outcome = outcome
        self.boom = boom
        self.sent: list[Notice] = []
        self.closed = False

    def send(self, n: Notice) -> DeliveryReport:
        self.sent.append(n)
        if self.boom:
            raise RuntimeError("channel broke")
        return DeliveryReport((ChannelReport(self.name, self.outcome),))

    def close(self) -> None:
        self.closed = True
        if self.boom:
            raise RuntimeError("close broke")


class FixedProbe:
    def __init__(self, reachable: bool) -> None:
        self.reachable = reachable
        self.calls = 0

    def check(self) -> ProbeResult:
        self.calls += 1
        return ProbeResult(self.reachable, "" if self.reachable else "no server (fake)")


# -- fan-out ----------------------------------------------------------------------------------


def test_fanout_tries_every_channel_in_order_and_reports_each(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.notify.notifier")
    desktop = FakeChannel("desktop", Outcome.UNREACHABLE)
    command, webhook = FakeChannel("command"), FakeChannel("webhook", Outcome.FAILED)
    fanout = FanoutNotifier([desktop, command, webhook])
    report = fanout.send(notice())
    assert [r.channel for r in report.results] == ["desktop", "command", "webhook"]
    assert report.outcome("command") is Outcome.SENT and report.delivered
    assert all(len(c.sent) == 1 for c in (desktop, command, webhook))
    assert "relogin-required [critical]" in caplog.text
    assert "desktop=unreachable, command=sent, webhook=failed" in caplog.text


def test_fanout_never_raises_and_reports_a_broken_channel(
        caplog: pytest.LogCaptureFixture) -> None:
    broken, after = FakeChannel("desktop", boom=True), FakeChannel("command", Outcome.FAILED)
    fanout = FanoutNotifier([broken, after])
    report = fanout.send(notice())
    assert report.results == (ChannelReport("desktop", Outcome.FAILED, "RuntimeError"),
                              ChannelReport("command", Outcome.FAILED))
    assert not report.delivered
    assert "reached no channel" in caplog.text
    fanout.close()
    assert broken.closed and after.closed


def test_build_notifier_follows_the_notify_section() -> None:
    assert build_notifier(NotifySection()).channels == ("desktop",)
    full = NotifySection(command=["true"], webhook="https://example.invalid/x")
    assert build_notifier(full).channels == ("desktop", "command", "webhook")
    assert build_notifier(NotifySection(desktop=False)).channels == ()
    assert DeliveryReport().delivered is False and str(DeliveryReport()) == "no channel configured"


def test_webhook_logs_name_only_scheme_and_host() -> None:
    url = "https://user:pw@hooks.example.com:8443/services/T0/B0/SECRET?token=SECRET"
    assert WebhookNotifier(url).safe_url == "https://hooks.example.com:8443"


def test_command_env_carries_the_notice_and_withholds_secrets() -> None:
    base = {"PATH": "/usr/bin", "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-x",
            "CREDSYNC_REFRESH__CLIENT_SECRET": "s3cret", "credsync_config": "/x"}
    env = command_env(base, notice())
    assert env["PATH"] == "/usr/bin"
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in env and "credsync_config" not in env
    assert "s3cret" not in env.values()
    assert env["CREDSYNC_EVENT"] == "relogin-required"
    assert env["CREDSYNC_URGENCY"] == "critical"
    assert env["CREDSYNC_AFFECTED_DIRS"] == os.pathsep.join(DIRS)
    assert env["CREDSYNC_TIME"] == "2027-01-15T08:00:00+00:00"


def test_desktop_does_not_touch_the_library_when_the_probe_says_no_server() -> None:
    probe = FixedProbe(False)
    desktop = DesktopNotifier(probe)
    report = desktop.send(notice())
    assert report.results == (ChannelReport("desktop", Outcome.UNREACHABLE, "no server (fake)"),)
    assert probe.calls == 1


def test_probe_without_any_session_bus_says_unreachable() -> None:
    with environ_overlay({"DBUS_SESSION_BUS_ADDRESS": None, "DISPLAY": None}):
        result = DBusNotificationProbe().check()
    assert not result.reachable and "no session bus" in result.detail


def test_probe_of_a_bus_that_is_gone_says_unreachable_quickly(tmp_path: Path) -> None:
    with environ_overlay({"DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/gone"}):
        started = time.monotonic()
        result = DBusNotificationProbe(timeout_s=1.0).check()
    assert not result.reachable
    assert time.monotonic() - started < 1.0


# -- command ----------------------------------------------------------------------------------


def test_command_runs_with_the_notice_in_its_environment(tmp_path: Path) -> None:
    argv, out = env_dumper(tmp_path)
    report = CommandNotifier(argv, base_env={"CLAUDE_CODE_OAUTH_TOKEN": "sk-x"}).send(notice())
    assert report.outcome("command") is Outcome.SENT
    env = json.loads(out.read_text())
    assert env["CREDSYNC_TITLE"] == notice().title
    assert env["CREDSYNC_BODY"] == notice().body
    assert (env["CREDSYNC_EVENT"], env["CREDSYNC_URGENCY"]) == ("relogin-required", "critical")
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in env


FULL_DUMP = "import json, os, sys\njson.dump(dict(os.environ), open(sys.argv[1], 'w'))\n"
SESSION_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/u",
               "USER": "u", "LOGNAME": "u", "LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC",
               "DISPLAY": ":9", "WAYLAND_DISPLAY": "wayland-1", "TMPDIR": "/tmp",
               "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1/bus",
               "XDG_RUNTIME_DIR": "/run/user/1"}
AGENT_SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-api03-secret", "AWS_SECRET_ACCESS_KEY": "aws",
                 "GITHUB_TOKEN": "ghp_x", "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-x",
                 "CREDSYNC_REFRESH__CLIENT_SECRET": "s3cret", "PYTHONPATH": "/evil",
                 "LD_PRELOAD": "/evil.so", "SSH_AUTH_SOCK": "/tmp/agent.sock"}


def test_the_command_gets_a_session_environment_not_the_agents(tmp_path: Path) -> None:
    # F13: a notify hook used to inherit every variable but CREDSYNC_* and the token variable.
    script, out = tmp_path / "dump.py", tmp_path / "env.json"
    script.write_text(FULL_DUMP)
    command = CommandNotifier([sys.executable, str(script), str(out)],
                              base_env={**SESSION_ENV, **AGENT_SECRETS})
    assert command.send(notice()).outcome("command") is Outcome.SENT
    env = json.loads(out.read_text())
    events = {"CREDSYNC_EVENT", "CREDSYNC_TITLE", "CREDSYNC_BODY", "CREDSYNC_URGENCY",
              "CREDSYNC_AFFECTED_DIRS", "CREDSYNC_TIME"}
    # Python itself may add LC_CTYPE (PEP 538 locale coercion): an LC_* name, allowed anyway.
    assert set(env) - {"LC_CTYPE"} == set(SESSION_ENV) | events
    assert {k: env[k] for k in SESSION_ENV} == SESSION_ENV
    assert not set(AGENT_SECRETS.values()) & set(env.values())


def test_command_failures_are_reported_not_raised(tmp_path: Path) -> None:
    failing = CommandNotifier([sys.executable, "-c", "import sys; sys.exit('no route to pager')"])
    report = failing.send(notice())
    assert report.outcome("command") is Outcome.FAILED
    assert "exited with 1: no route to pager" in report.results[0].detail
    missing = CommandNotifier([str(tmp_path / "no-such-program")]).send(notice())
    assert missing.outcome("command") is Outcome.FAILED
    assert "cannot start" in missing.results[0].detail
    with pytest.raises(ValueError):
        CommandNotifier([])


@pytest.mark.integration
def test_a_hanging_command_and_its_children_are_killed_at_the_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # A child that would keep running (and hold a pipe) after its parent: killed with the group.
    argv = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]
    started = time.monotonic()
    report = CommandNotifier(argv, timeout_s=0.5).send(notice())
    assert time.monotonic() - started < 5
    assert report.outcome("command") is Outcome.FAILED and "killed" in report.results[0].detail
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and "Z" not in _proc_state(child):
        assert time.monotonic() < deadline, "the command's child outlived the timeout"
        time.sleep(0.01)  # polling a condition with a deadline


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


# -- webhook ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_webhook_posts_the_notice_as_json(webhook_server: Hook) -> None:
    hook = WebhookNotifier(webhook_server.url)
    try:
        report = hook.send(notice())
    finally:
        hook.close()
    assert report.outcome("webhook") is Outcome.SENT
    got = webhook_server.received.get(timeout=5)
    assert got["path"] == "/hooks/SECRET-path-token"
    assert got["type"] == "application/json"
    assert got["json"] == {
        "source": "credsync", "event": "relogin-required", "title": notice().title,
        "body": notice().body, "urgency": "critical", "affected_config_dirs": list(DIRS),
        "time": "2027-01-15T08:00:00+00:00"}


@pytest.mark.integration
def test_webhook_errors_are_reported_without_the_secret_part_of_the_url(
        webhook_server: Hook) -> None:
    webhook_server.status = 500
    hook = WebhookNotifier(webhook_server.url)
    report = hook.send(notice())
    hook.close()
    detail = report.results[0].detail
    assert report.outcome("webhook") is Outcome.FAILED and detail.startswith("HTTP 500 from ")
    assert "SECRET" not in detail and "127.0.0.1" in detail


@pytest.mark.integration
def test_webhook_to_a_stuck_server_gives_up_at_its_timeout(webhook_server: Hook) -> None:
    webhook_server.hang = threading.Event()
    hook = WebhookNotifier(webhook_server.url, timeout_s=0.5)
    started = time.monotonic()
    report = hook.send(notice())
    hook.close()
    assert time.monotonic() - started < 5
    assert report.outcome("webhook") is Outcome.FAILED
    assert "Timeout" in report.results[0].detail and "SECRET" not in report.results[0].detail


# -- real dunst on Xvfb -----------------------------------------------------------------------


@pytest.mark.integration
def test_critical_notice_is_shown_by_dunst_with_summary_body_and_urgency(
        real_desktop: RealDesktop) -> None:
    # The policy's own wording, so that the screenshot shows what a user would read.
    clock = FakeClock()
    [critical] = AlertPolicy(NotifySection(), clock).observe(AuthObservation(
        relogin_required=True, reason="refresh rejected", affected_dirs=DIRS,
        since=clock.now() - 600, login_fingerprint="fp-old"))
    desktop = DesktopNotifier()
    try:
        report = desktop.send(critical)
    finally:
        desktop.close()
    assert report.results == (ChannelReport("desktop", Outcome.SENT),)
    shown = real_desktop.wait_for(critical.title)
    assert shown == {"DUNST_APP_NAME": "credsync", "DUNST_SUMMARY": critical.title,
                     "DUNST_BODY": critical.body, "DUNST_URGENCY": "CRITICAL"}
    shot = real_desktop.screenshot(artifacts_dir() / "notification.png")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


@pytest.mark.integration
def test_policy_to_screen_restored_notice_is_normal_urgency(real_desktop: RealDesktop) -> None:
    clock = FakeClock()
    policy = AlertPolicy(NotifySection(), clock)
    fanout = build_notifier(NotifySection())
    try:
        sent = [fanout.send(n) for n in policy.observe(AuthObservation(
            relogin_required=True, reason="refresh rejected", affected_dirs=DIRS,
            since=clock.now(), login_fingerprint="fp-old"))]
        sent += [fanout.send(n) for n in policy.observe(AuthObservation(
            relogin_required=False, valid_login_fingerprint="fp-new"))]
    finally:
        fanout.close()
    assert [r.delivered for r in sent] == [True, True]
    assert real_desktop.wait_for("Claude Code needs a new login: run claude auth login")[
        "DUNST_URGENCY"] == "CRITICAL"
    assert real_desktop.wait_for("Claude Code sessions restored")["DUNST_URGENCY"] == "NORMAL"


@pytest.mark.integration
def test_command_fires_alongside_a_reachable_desktop(real_desktop: RealDesktop,
                                                     tmp_path: Path) -> None:
    argv, out = env_dumper(tmp_path)
    fanout = FanoutNotifier([DesktopNotifier(), CommandNotifier(argv)])
    try:
        report = fanout.send(notice(title="both channels"))
    finally:
        fanout.close()
    assert str(report) == "desktop=sent, command=sent"
    assert real_desktop.wait_for("both channels")["DUNST_APP_NAME"] == "credsync"
    assert json.loads(out.read_text())["CREDSYNC_TITLE"] == "both channels"


@pytest.mark.integration
def test_server_gone_after_a_send_is_seen_by_the_next_probe(real_desktop: RealDesktop) -> None:
    desktop = DesktopNotifier()
    try:
        assert desktop.send(notice(title="first")).delivered
        dunst = real_desktop.procs[-1]
        dunst.terminate()
        dunst.wait(timeout=5)
        report = desktop.send(notice(title="second"))
    finally:
        desktop.close()
    assert report.outcome("desktop") is Outcome.UNREACHABLE
    assert "org.freedesktop.Notifications" in report.results[0].detail


MUTE_SERVER = (
    "import sys\n"
    "from jeepney.bus_messages import message_bus\n"
    "from jeepney.io.blocking import open_dbus_connection\n"
    "conn = open_dbus_connection()\n"
    "conn.send_and_get_reply(message_bus.RequestName('org.freedesktop.Notifications'), "
    "timeout=5)\n"
    "print('owned', flush=True)\n"
    "sys.stdin.read()  # owns the name and never reads a call: a hung server\n")


@pytest.mark.integration
def test_a_server_that_never_answers_fails_the_send_at_its_deadline(
        bus_without_server: Session) -> None:
    mute = subprocess.Popen([sys.executable, "-c", MUTE_SERVER], env=bus_without_server.env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    desktop = DesktopNotifier(timeout_s=0.5)
    try:
        assert mute.stdout is not None
        assert read_line(mute.stdout.fileno(), "the mute server") == "owned"
        assert DBusNotificationProbe().check().reachable
        started = time.monotonic()
        report = desktop.send(notice())
        assert time.monotonic() - started < 3
    finally:
        desktop.close()
        assert mute.stdin is not None and mute.stdout is not None
        mute.stdin.close()
        mute.wait(timeout=10)
        mute.stdout.close()
    assert report.outcome("desktop") is Outcome.FAILED
    assert "no answer" in report.results[0].detail


# -- why the desktop cannot be reached (F10) -----------------------------------------------------


def test_desktop_problem_names_a_missing_session_bus_and_the_way_out() -> None:
    with environ_overlay({"DBUS_SESSION_BUS_ADDRESS": None, "DISPLAY": None}):
        problem = desktop_problem()
    assert problem is not None and "DBUS_SESSION_BUS_ADDRESS is unset" in problem
    assert "[notify] command or webhook" in problem


@pytest.mark.integration
def test_desktop_problem_names_a_bus_without_a_notification_server(
        bus_without_server: Session) -> None:
    problem = desktop_problem()
    assert problem is not None and problem.startswith("no notification server")
    assert "org.freedesktop.Notifications" in problem


@pytest.mark.integration
def test_desktop_problem_is_none_with_a_real_notification_server(
        real_desktop: RealDesktop) -> None:
    assert desktop_problem() is None


HIDE_LIBRARY = (
    "import importlib.abc, sys\n"
    "class Hide(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'desktop_notifier':\n"
    "            raise ModuleNotFoundError(name)\n"
    "        return None\n"
    "sys.meta_path.insert(0, Hide())\n"
    "from agent.notify.notifier import desktop_problem\n"
    "print(desktop_problem())\n")


def test_desktop_problem_says_when_the_library_is_not_installed() -> None:
    # A real interpreter in which desktop_notifier cannot be imported (as in an install that
    # lacks it); hiding it in this process would leave it hidden for every other test.
    out = subprocess.run([sys.executable, "-c", HIDE_LIBRARY], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("desktop-notifier is not installed; reinstall credsync")


def test_build_notifier_logs_an_undeliverable_desktop_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.notify.notifier")
    fanout = build_notifier(NotifySection(), probe=FixedProbe(False))
    fanout.close()
    said = [r.getMessage() for r in caplog.records if "desktop notifications:" in r.getMessage()]
    assert said == ["desktop notifications: no notification server (no server (fake)): alerts "
                    "go to [notify] command or webhook only; start a notification daemon, or "
                    "set one of those"] or (len(said) == 1 and "DBUS_SESSION" in said[0])
    caplog.clear()
    build_notifier(NotifySection(), probe=FixedProbe(True)).close()
    assert not [r for r in caplog.records if "desktop notifications:" in r.getMessage()]


def test_desktop_notifier_is_a_plain_dependency() -> None:
    # F10: the documented `pip install .` must bring the desktop channel, not an extra.
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = data["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("desktop-notifier") for d in deps), deps
    assert data["project"]["optional-dependencies"]["notify"] == []  # old instructions work


FRESH_SEND = (
    "import sys\n"
    "from agent.notify.alerts import Notice\n"
    "from agent.notify.notifier import DesktopNotifier, desktop_problem\n"
    "assert desktop_problem() is None, desktop_problem()\n"
    "n = Notice('relogin-required', sys.argv[1], 'from a fresh install', 'critical', (), 0.0)\n"
    "d = DesktopNotifier()\n"
    "print(d.send(n))\n"
    "d.close()\n")


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_fresh_pip_install_delivers_to_a_real_notification_server(
        tmp_path: Path, real_desktop: RealDesktop) -> None:
    # The default install, as the README gives it: `pip install .` into a new venv (from PyPI).
    source = tmp_path / "src"
    # Copy the checkout's tracked and new files: building in place would leave build/ behind.
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
                           check=True, capture_output=True, text=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)],
                         capture_output=True, text=True, timeout=500)
    if pip.returncode != 0 and "No matching distribution" in pip.stderr:
        pytest.skip(f"no package index reachable: {pip.stderr.strip()[-200:]}")
    assert pip.returncode == 0, pip.stderr
    # Run from outside the checkout, so that the installed package is the one imported.
    out = subprocess.run([str(venv / "bin" / "python"), "-c", FRESH_SEND, "fresh-install"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "desktop=sent", out.stderr
    assert real_desktop.wait_for("fresh-install")["DUNST_BODY"] == "from a fresh install"
    # And `credsync doctor` of that install says the notification path works.
    from tests.agentproc import write_config

    config = write_config(tmp_path / "config.toml", [tmp_path / "claude"], tmp_path / "state",
                          keychain=False, notify={"desktop": True})
    doctor = subprocess.run([str(venv / "bin" / "credsync"), "doctor", "--config", str(config)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = [x for x in doctor.stdout.splitlines() if x[6:].startswith("notifications:")]
    assert lines == ["ok    notifications: a notification server is reachable and the "
                     "notifier is installed"], doctor.stdout + doctor.stderr


# -- no server: the fallbacks -----------------------------------------------------------------


@pytest.mark.integration
def test_no_server_probe_is_quick_and_command_and_webhook_fire(
        bus_without_server: Session, webhook_server: Hook, tmp_path: Path) -> None:
    started = time.monotonic()
    probe = DBusNotificationProbe(timeout_s=2.0).check()
    assert time.monotonic() - started < 1.0  # an answer from the bus, not the deadline
    assert not probe.reachable and "no org.freedesktop.Notifications" in probe.detail

    argv, out = env_dumper(tmp_path)
    settings = NotifySection(command=argv, webhook=webhook_server.url)
    fanout = build_notifier(settings)
    try:
        report = fanout.send(notice())
    finally:
        fanout.close()
    assert [(r.channel, r.outcome) for r in report.results] == [
        ("desktop", Outcome.UNREACHABLE), ("command", Outcome.SENT), ("webhook", Outcome.SENT)]
    env = json.loads(out.read_text())
    assert (env["CREDSYNC_EVENT"], env["CREDSYNC_TITLE"]) == ("relogin-required", notice().title)
    assert env["CREDSYNC_BODY"] == notice().body and env["CREDSYNC_URGENCY"] == "critical"
    got = webhook_server.received.get(timeout=5)["json"]
    assert (got["event"], got["title"], got["urgency"]) == (
        "relogin-required", notice().title, "critical")


@pytest.mark.integration
def test_200_sends_with_no_server_keep_the_fd_count_flat(bus_without_server: Session) -> None:
    desktop = DesktopNotifier()
    try:
        desktop.send(notice())  # warm-up: imports and lazily created objects
        before = open_fds()
        reports = [desktop.send(notice()) for _ in range(200)]
        after = open_fds()
    finally:
        desktop.close()
    assert {r.outcome("desktop") for r in reports} == {Outcome.UNREACHABLE}
    assert after - before <= 2


@pytest.mark.integration
def test_failed_library_sends_do_not_leak_fds_either(bus_without_server: Session,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    # A probe that wrongly says yes: every send reaches the library and fails there; the
    # library would leak one fd per failure if its loop were kept.
    caplog.set_level(logging.CRITICAL, logger="desktop_notifier")
    desktop = DesktopNotifier(AssumeReachable())
    try:
        desktop.send(notice())
        before = open_fds()
        reports = [desktop.send(notice()) for _ in range(200)]
        after = open_fds()
    finally:
        desktop.close()
    assert {r.outcome("desktop") for r in reports} == {Outcome.FAILED}
    assert after - before <= 2
