"""One contract for the notify channels (agent.notify.notifier's ``Channel``: ``name``,
``send(notice) -> DeliveryReport``, ``close()``), run against every channel with a real receiver.

Subjects and their receivers:
  desktop   DesktopNotifier -> dunst on Xvfb on a private session bus (tests/realdesktop.py);
            dunst's rule script records each notification it shows
  command   CommandNotifier -> a real script that appends its whole environment, one JSON line
            per run, to a file
  webhook   WebhookNotifier -> a real HTTP server on 127.0.0.1 that records every request
            (path, headers, body)

Failing receivers: no notification server on the bus, no session bus at all; a command that
exits 1, a command that does not exist; a closed port, a server answering 500.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.credential import SECRET_PATTERN, fingerprint_of
from agent.notify.alerts import Notice, Urgency
from agent.notify.notifier import (
    Channel,
    CommandNotifier,
    DesktopNotifier,
    Outcome,
    WebhookNotifier,
)
from tests.realdesktop import (  # noqa: F401
    RealDesktop,
    Session,
    bus_without_server_fixture,
    real_desktop_fixture,
)
from tests.realkeyring import environ_overlay

DIRS = ("/home/u/.claude", "/home/u/work/.claude")
# Token-looking strings where a careless channel could pick them up: the agent's environment.
ACCESS = "sk-ant-oat01-" + "A" * 60
REFRESH = "sk-ant-ort01-" + "B" * 60
AGENT_SECRETS = {"CLAUDE_CODE_OAUTH_TOKEN": ACCESS, "ANTHROPIC_API_KEY": "sk-ant-api03-" + "C" * 50,
                 "CREDSYNC_REFRESH__CLIENT_SECRET": "D" * 48, "GITHUB_TOKEN": "ghp_" + "E" * 40}


def make_notice(title: str, urgency: Urgency = "critical") -> Notice:
    # Fingerprints only, as every credsync notice; a newline, backticks and non-ASCII text too.
    body = (f"Refresh rejected for login {fingerprint_of(REFRESH)} (access "
            f"{fingerprint_of(ACCESS)}).\nTo fix it, run `claude auth login` — in any session.")
    return Notice("relogin-required", title, body, urgency, DIRS, 1_800_000_000.0)


@dataclass(frozen=True)
class Received:
    title: str
    body: str
    urgency: str  # lower case: critical / normal
    raw: str  # everything the receiver got for this notice, as text


@dataclass
class Subject:
    name: str
    channel: Channel
    received: Callable[[], list[Received]]
    # Makes sure every delivery of what was sent so far has reached received() (desktop: dunst
    # runs its rule script asynchronously; the others are done when send returns).
    settle: Callable[[], None]

    def got(self, title: str) -> list[Received]:
        self.settle()
        return [r for r in self.received() if r.title == title]


# -- receivers ---------------------------------------------------------------------------------


ENV_APPENDER = ("import json, os, sys\n"
                "line = json.dumps(dict(os.environ)) + '\\n'\n"
                "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)\n"
                "os.write(fd, line.encode())\n"
                "os.close(fd)\n")


def _command(tmp_path: Path) -> Subject:
    script, out = tmp_path / "append_env.py", tmp_path / "env.jsonl"
    script.write_text(ENV_APPENDER)
    channel = CommandNotifier([sys.executable, str(script), str(out)],
                              base_env={**os.environ, **AGENT_SECRETS})

    def received() -> list[Received]:
        if not out.exists():
            return []
        got = []
        for line in out.read_text().splitlines():
            env = json.loads(line)
            got.append(Received(env.get("CREDSYNC_TITLE", ""), env.get("CREDSYNC_BODY", ""),
                                env.get("CREDSYNC_URGENCY", ""), line))
        return got

    return Subject("command", channel, received, lambda: None)


@dataclass
class HttpReceiver:
    url: str
    requests: list[dict[str, Any]]
    stop: Callable[[], None]


def http_receiver(status: int = 204) -> HttpReceiver:
    requests: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                 "body": body.decode("utf-8", "replace")})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    return HttpReceiver(f"http://127.0.0.1:{server.server_address[1]}/hooks/credsync",
                        requests, stop)


def _webhook(request: pytest.FixtureRequest) -> Subject:
    receiver = http_receiver()
    request.addfinalizer(receiver.stop)
    channel = WebhookNotifier(receiver.url)

    def received() -> list[Received]:
        got = []
        for req in list(receiver.requests):
            payload = json.loads(req["body"])
            got.append(Received(payload.get("title", ""), payload.get("body", ""),
                                payload.get("urgency", ""), json.dumps(req)))
        return got

    return Subject("webhook", channel, received, lambda: None)


def _desktop(request: pytest.FixtureRequest) -> Subject:
    desktop: RealDesktop = request.getfixturevalue("real_desktop")
    sentinels = iter(range(1_000_000))

    def received() -> list[Received]:
        return [Received(r["DUNST_SUMMARY"], r["DUNST_BODY"], r["DUNST_URGENCY"].lower(),
                         json.dumps(r)) for r in desktop.records()]

    def settle() -> None:
        # A notice sent after everything else, through another channel object: once dunst has
        # run the rule script for it, it has had every earlier one in hand.
        title = f"sentinel {next(sentinels)}"
        marker = DesktopNotifier()
        try:
            assert marker.send(make_notice(title, "normal")).delivered
        finally:
            marker.close()
        desktop.wait_for(title)

    return Subject("desktop", DesktopNotifier(), received, settle)


def desktop_shown(desktop: RealDesktop) -> int:
    """How many notifications dunst holds (shown or queued): its own count, not the script's."""
    total = 0
    for what in ("displayed", "waiting"):
        out = subprocess.run(["dunstctl", "count", what], env=desktop.env, capture_output=True,
                             timeout=5, check=True)
        total += int(out.stdout.decode().strip() or 0)
    return total


CHANNELS = [pytest.param("desktop", marks=pytest.mark.integration), "command", "webhook"]


@pytest.fixture
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    name: str = request.param
    if name == "command":
        built = _command(tmp_path)
    elif name == "webhook":
        built = _webhook(request)
    else:
        built = _desktop(request)
    yield built
    built.channel.close()


# -- delivery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("urgency", ["critical", "normal"])
@pytest.mark.parametrize("subject", CHANNELS, indirect=True)
def test_a_notice_is_delivered_exactly_once_with_title_body_and_urgency(
        subject: Subject, urgency: Urgency, request: pytest.FixtureRequest) -> None:
    notice = make_notice(f"Claude Code needs a new login ({urgency})", urgency)
    report = subject.channel.send(notice)
    assert report.delivered
    assert [(r.channel, r.outcome) for r in report.results] == [(subject.name, Outcome.SENT)]
    got = subject.got(notice.title)
    assert len(got) == 1, got
    assert (got[0].title, got[0].body, got[0].urgency) == (notice.title, notice.body, urgency)
    if subject.name == "desktop":  # dunst's own count agrees: the notice and the sentinel
        assert desktop_shown(request.getfixturevalue("real_desktop")) == 2


@pytest.mark.parametrize("subject", CHANNELS, indirect=True)
def test_two_notices_are_two_deliveries(subject: Subject) -> None:
    first, second = make_notice("first notice"), make_notice("second notice", "normal")
    assert subject.channel.send(first).delivered
    assert subject.channel.send(second).delivered
    assert (len(subject.got(first.title)), len(subject.got(second.title))) == (1, 1)


@pytest.mark.parametrize("subject", CHANNELS, indirect=True)
def test_the_receiver_gets_no_token_looking_string(subject: Subject) -> None:
    notice = make_notice("Claude Code needs a new login")
    assert SECRET_PATTERN.search(notice.title + notice.body) is None  # the premise
    assert subject.channel.send(notice).delivered
    [got] = subject.got(notice.title)
    leaked = SECRET_PATTERN.findall(got.raw)
    assert leaked == [], f"{subject.name} receiver got {leaked}"
    for secret in (ACCESS, REFRESH, *AGENT_SECRETS.values()):
        assert secret not in got.raw


@pytest.mark.parametrize("subject", CHANNELS, indirect=True)
def test_close_is_idempotent_and_a_closed_channel_can_send_again(subject: Subject) -> None:
    subject.channel.close()  # never used
    subject.channel.close()
    assert subject.channel.send(make_notice("before close")).delivered
    subject.channel.close()
    subject.channel.close()
    assert subject.channel.send(make_notice("after close")).delivered
    assert len(subject.got("before close")) == 1 and len(subject.got("after close")) == 1


# -- failing receivers: a failure report, never an exception -----------------------------------


def _closed_port_url() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/credsync"


@dataclass
class Failing:
    channel: Channel
    outcome: Outcome  # what the report says
    reached: Callable[[], bool] = lambda: True  # the receiver was really tried (where visible)


def _failing(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Failing:
    if kind == "desktop-no-server":
        request.getfixturevalue("bus_without_server")
        return Failing(DesktopNotifier(), Outcome.UNREACHABLE)
    if kind == "desktop-no-bus":
        stack = contextlib.ExitStack()
        request.addfinalizer(stack.close)
        gone = f"unix:path={tmp_path / 'no-bus'}"
        stack.enter_context(environ_overlay({"DBUS_SESSION_BUS_ADDRESS": gone, "DISPLAY": None}))
        return Failing(DesktopNotifier(), Outcome.UNREACHABLE)
    if kind == "command-exits-1":
        marker = tmp_path / "ran"
        code = f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(1)"
        return Failing(CommandNotifier([sys.executable, "-c", code]), Outcome.FAILED,
                       lambda: marker.read_text() == "xx")
    if kind == "command-missing":
        return Failing(CommandNotifier([str(tmp_path / "no-such-program")]), Outcome.FAILED)
    if kind == "webhook-closed-port":
        return Failing(WebhookNotifier(_closed_port_url()), Outcome.FAILED)
    receiver = http_receiver(status=500)  # webhook-http-500
    request.addfinalizer(receiver.stop)
    return Failing(WebhookNotifier(receiver.url), Outcome.FAILED,
                   lambda: len(receiver.requests) == 2)


FAILING = [
    pytest.param("desktop-no-server", marks=pytest.mark.integration),
    "desktop-no-bus", "command-exits-1", "command-missing", "webhook-closed-port",
    "webhook-http-500",
]


@pytest.mark.parametrize("kind", FAILING)
def test_an_unreachable_receiver_gives_a_failure_report_and_never_raises(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    failing = _failing(kind, request, tmp_path)
    notice = make_notice("nobody hears this")
    first = failing.channel.send(notice)
    again = failing.channel.send(notice)  # a failure leaves the channel usable
    failing.channel.close()
    failing.channel.close()
    assert failing.reached()
    name = kind.split("-")[0]
    for report in (first, again):
        assert not report.delivered
        [result] = report.results
        assert (result.channel, result.outcome) == (name, failing.outcome)
        assert result.detail and "\n" not in result.detail
        assert SECRET_PATTERN.search(result.detail) is None
