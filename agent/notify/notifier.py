"""Delivery of notices: desktop, command, webhook, and the fan-out that tries them all.

    FanoutNotifier ── DesktopNotifier   desktop-notifier, after a D-Bus probe (dbus-fast)
                   ├─ CommandNotifier   the configured argv, the notice in its environment
                   └─ WebhookNotifier   JSON POST (httpx)

This is the only module importing desktop_notifier and dbus_fast; it is also, with
agent/refresh/http.py, one of the two importers of httpx (the webhook).

Fan-out policy: the desktop when a notification server is reachable; the command and the webhook
whenever they are configured. They are explicit user choices, and a reachable server does not mean
anyone is looking at the screen (a locked laptop, a session reached over SSH), so they are not
held back when the desktop works. With no server, they are what remains: the fallback.

Every send is logged with its per-channel outcome; no channel error leaves ``FanoutNotifier.send``.
Notices never carry a token; webhook URLs are logged as scheme and host only, since a path or
query string often holds a secret (Slack or ntfy style URLs).
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

import httpx

from agent.config import NotifySection
from agent.notify.alerts import Notice

if TYPE_CHECKING:
    import desktop_notifier

__all__ = [
    "APP_NAME",
    "Channel",
    "ChannelReport",
    "CommandNotifier",
    "DBusNotificationProbe",
    "DeliveryReport",
    "DesktopNotifier",
    "FanoutNotifier",
    "Notifier",
    "Outcome",
    "ProbeResult",
    "ServerProbe",
    "WebhookNotifier",
    "build_notifier",
    "default_probe",
    "desktop_problem",
]

log = logging.getLogger(__name__)

APP_NAME = "credsync"
NOTIFICATIONS_NAME = "org.freedesktop.Notifications"
PROBE_TIMEOUT_S = 1.0
DESKTOP_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
WEBHOOK_TIMEOUT_S = 10.0
# What a notify command inherits from the agent: only what a program needs to run and to reach
# the user's session. Everything else stays behind: the agent's environment can hold secrets
# (CREDSYNC_* settings with client_secret, ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN, cloud
# credentials), and a notify hook has no use for them. The Windows names let a program start there.
_PASSED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "DISPLAY",
    "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR",
    "SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "TEMP", "TMP", "USERPROFILE",
})
_PASSED_PREFIX = "LC_"
_STDERR_TAIL = 300
NOT_INSTALLED = ("desktop-notifier is not installed; reinstall credsync "
                 "(`pip install credsync` brings it)")

T = TypeVar("T")


class Outcome(str, enum.Enum):
    SENT = "sent"
    UNREACHABLE = "unreachable"  # nothing attempted: no server, or the library is missing
    FAILED = "failed"


@dataclass(frozen=True)
class ChannelReport:
    channel: str
    outcome: Outcome
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.channel}={self.outcome.value}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class DeliveryReport:
    results: tuple[ChannelReport, ...] = ()

    @property
    def delivered(self) -> bool:
        return any(r.outcome is Outcome.SENT for r in self.results)

    def outcome(self, channel: str) -> Outcome | None:
        return next((r.outcome for r in self.results if r.channel == channel), None)

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.results) or "no channel configured"


class Notifier(Protocol):
    def send(self, notice: Notice) -> DeliveryReport: ...


class Channel(Notifier, Protocol):
    @property
    def name(self) -> str: ...

    def close(self) -> None: ...


def _report(channel: str, outcome: Outcome, detail: str = "") -> DeliveryReport:
    return DeliveryReport((ChannelReport(channel, outcome, detail),))


def _run_bounded(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T],
                 timeout_s: float) -> T:
    """Run ``coro`` on ``loop`` from synchronous code, cancelled after ``timeout_s``."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout_s))


# -- desktop -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    detail: str = ""


class ServerProbe(Protocol):
    def check(self) -> ProbeResult: ...


class DBusNotificationProbe:
    """Is a notification server on the session bus desktop-notifier will use?

    desktop-notifier's send never raises when there is none (and leaks a descriptor per failed
    send), so ``DesktopNotifier`` asks this first: NameHasOwner, within a deadline. dbus-fast
    resolves the bus address exactly as desktop-notifier does, from the environment at call time.
    """

    def __init__(self, timeout_s: float = PROBE_TIMEOUT_S, name: str = NOTIFICATIONS_NAME) -> None:
        self._timeout_s = timeout_s
        self._name = name

    def check(self) -> ProbeResult:
        loop = asyncio.new_event_loop()
        try:
            owned = _run_bounded(loop, self._name_has_owner(), self._timeout_s)
        except ImportError:
            return ProbeResult(False, "dbus-fast is not installed")
        except asyncio.TimeoutError:
            return ProbeResult(False, f"session bus did not answer within {self._timeout_s:g} s")
        except Exception as exc:  # any failure here just means "not reachable"
            return ProbeResult(False, f"no session bus ({type(exc).__name__})")
        finally:
            loop.close()
        return ProbeResult(owned, "" if owned else f"no {self._name} on the session bus")

    async def _name_has_owner(self) -> bool:
        from dbus_fast import Message, MessageType
        from dbus_fast.aio import MessageBus

        bus = await MessageBus().connect()
        try:
            reply = await bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="NameHasOwner", signature="s",
                body=[self._name]))
        finally:
            bus.disconnect()
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            raise RuntimeError("NameHasOwner failed")
        return bool(reply.body[0])


class AssumeReachable:
    """Platforms without D-Bus (macOS, Windows): the library itself reports dispatch."""

    def check(self) -> ProbeResult:
        return ProbeResult(True)


def default_probe() -> ServerProbe:
    if sys.platform in ("darwin", "win32"):
        return AssumeReachable()
    return DBusNotificationProbe()


class DesktopNotifier:
    """A desktop notification through desktop-notifier, app name credsync.

    The library instance and its event loop are created on first use and thrown away after any
    failure: a failed send leaves a descriptor behind in the loop, and closing the loop frees it.
    """

    name = "desktop"

    def __init__(self, probe: ServerProbe | None = None, *, app_name: str = APP_NAME,
                 timeout_s: float = DESKTOP_TIMEOUT_S) -> None:
        self._probe = probe if probe is not None else default_probe()
        self._app_name = app_name
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lib: desktop_notifier.DesktopNotifier | None = None

    def send(self, notice: Notice) -> DeliveryReport:
        probe = self._probe.check()
        if not probe.reachable:
            return _report(self.name, Outcome.UNREACHABLE, probe.detail)
        try:
            dispatched = self._dispatch(notice)
        except ImportError:
            return _report(self.name, Outcome.UNREACHABLE, NOT_INSTALLED)
        except asyncio.TimeoutError:
            self._reset()
            return _report(self.name, Outcome.FAILED,
                           f"no answer from the notification server in {self._timeout_s:g} s")
        except Exception as exc:  # the library's errors are not a documented set
            self._reset()
            return _report(self.name, Outcome.FAILED, type(exc).__name__)
        if not dispatched:
            self._reset()
            return _report(self.name, Outcome.FAILED, "the notification server did not take it")
        return _report(self.name, Outcome.SENT)

    def close(self) -> None:
        self._reset()

    def _dispatch(self, notice: Notice) -> bool:
        import desktop_notifier as dn

        if self._lib is None or self._loop is None:
            self._loop = asyncio.new_event_loop()
            # No icon: the library's default is the Python logo, which says nothing to a user.
            self._lib = dn.DesktopNotifier(app_name=self._app_name, app_icon=None)
        urgency = dn.Urgency.Critical if notice.urgency == "critical" else dn.Urgency.Normal
        # The library logs failures instead of raising; its dispatch callback is the receipt.
        dispatched: list[bool] = []
        coro = self._lib.send(notice.title, notice.body, urgency=urgency,
                              on_dispatched=lambda: dispatched.append(True))
        _run_bounded(self._loop, coro, self._timeout_s)
        return bool(dispatched)

    def _reset(self) -> None:
        loop, self._loop, self._lib = self._loop, None, None
        if loop is not None:
            loop.close()
            # The failed bus connection sits in a reference cycle: collect the young generations
            # now (cheap), or its socket stays open until the collector happens to run.
            gc.collect(1)


# -- command -----------------------------------------------------------------------------------


def command_env(base: Mapping[str, str], notice: Notice) -> dict[str, str]:
    """The notify command's environment: a minimal session environment, plus the notice."""
    env = {k: v for k, v in base.items()
           if k.upper() in _PASSED_NAMES or k.upper().startswith(_PASSED_PREFIX)}
    env.update({
        "CREDSYNC_EVENT": notice.event,
        "CREDSYNC_TITLE": notice.title,
        "CREDSYNC_BODY": notice.body,
        "CREDSYNC_URGENCY": notice.urgency,
        "CREDSYNC_AFFECTED_DIRS": os.pathsep.join(notice.affected_dirs),
        "CREDSYNC_TIME": notice.time_iso,
    })
    return env


class CommandNotifier:
    """Runs ``[notify] command`` with the notice in CREDSYNC_* variables, within a timeout."""

    name = "command"

    def __init__(self, argv: Sequence[str], *, timeout_s: float = COMMAND_TIMEOUT_S,
                 base_env: Mapping[str, str] | None = None) -> None:
        if not argv:
            raise ValueError("the notify command needs at least a program name")
        self._argv = list(argv)
        self._timeout_s = timeout_s
        self._base_env = base_env

    def send(self, notice: Notice) -> DeliveryReport:
        env = command_env(os.environ if self._base_env is None else self._base_env, notice)
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    self._argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=err, close_fds=True, start_new_session=os.name == "posix")
            except OSError as exc:
                return _report(self.name, Outcome.FAILED,
                               f"cannot start {self._argv[0]}: {exc.strerror or exc}")
            try:
                code = proc.wait(timeout=self._timeout_s)
            except subprocess.TimeoutExpired:
                _kill(proc)
                return _report(self.name, Outcome.FAILED,
                               f"{self._argv[0]} took over {self._timeout_s:g} s; killed")
            if code != 0:
                return _report(self.name, Outcome.FAILED,
                               f"{self._argv[0]} exited with {code}{_tail(err)}")
        return _report(self.name, Outcome.SENT)

    def close(self) -> None:
        """Nothing held between sends."""


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # Its own session: kill the group, so children holding on cannot outlive the timeout.
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
        log.warning("notify command pid %d did not exit after SIGKILL", proc.pid)


def _tail(err: IO[bytes]) -> str:
    err.seek(0, os.SEEK_END)
    err.seek(max(err.tell() - _STDERR_TAIL, 0))
    text = " ".join(err.read().decode("utf-8", "replace").split())
    return f": {text}" if text else ""


# -- webhook -----------------------------------------------------------------------------------


def webhook_payload(notice: Notice) -> dict[str, Any]:
    return {
        "source": APP_NAME,
        "event": notice.event,
        "title": notice.title,
        "body": notice.body,
        "urgency": notice.urgency,
        "affected_config_dirs": list(notice.affected_dirs),
        "time": notice.time_iso,
    }


class WebhookNotifier:
    """POSTs the notice as JSON to ``[notify] webhook``; any 2xx answer counts as delivered."""

    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = WEBHOOK_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._transport = transport
        self._client: httpx.Client | None = None

    @property
    def safe_url(self) -> str:
        url = httpx.URL(self._url)
        return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"

    def send(self, notice: Notice) -> DeliveryReport:
        if self._client is None:
            self._client = httpx.Client(timeout=self._timeout_s, transport=self._transport)
        try:
            response = self._client.post(self._url, json=webhook_payload(notice))
        except httpx.HTTPError as exc:
            return _report(self.name, Outcome.FAILED,
                           f"{type(exc).__name__} posting to {self.safe_url}")
        if not response.is_success:
            return _report(self.name, Outcome.FAILED,
                           f"HTTP {response.status_code} from {self.safe_url}")
        return _report(self.name, Outcome.SENT)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


# -- fan-out -----------------------------------------------------------------------------------


class FanoutNotifier:
    """Sends each notice on every channel in order (desktop first); never raises."""

    def __init__(self, channels: Sequence[Channel]) -> None:
        self._channels = list(channels)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._channels)

    def send(self, notice: Notice) -> DeliveryReport:
        results: list[ChannelReport] = []
        for channel in self._channels:
            try:
                results.extend(channel.send(notice).results)
            except Exception as exc:  # one broken channel must not stop the rest
                results.append(ChannelReport(channel.name, Outcome.FAILED, type(exc).__name__))
        report = DeliveryReport(tuple(results))
        _log_delivery(notice, report)
        return report

    def close(self) -> None:
        for channel in self._channels:
            try:
                channel.close()
            except Exception as exc:  # shutting down: report and go on
                log.warning("closing notify channel %s failed: %s", channel.name,
                            type(exc).__name__)


def _log_delivery(notice: Notice, report: DeliveryReport) -> None:
    level = logging.WARNING if notice.urgency == "critical" else logging.INFO
    log.log(level, "notice %s [%s]: %s | dirs: %s | delivery: %s", notice.event, notice.urgency,
            notice.title, ", ".join(notice.affected_dirs) or "-", report)
    if not report.delivered:
        log.warning("notice %s reached no channel; it stays in `credsync status` until cleared",
                    notice.event)


def _installed(*modules: str) -> bool:
    # find_spec, not import: status must stay quick, and importing the library costs more.
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):  # a broken install: as good as none
        return False


def desktop_problem(probe: ServerProbe | None = None) -> str | None:
    """Why a desktop notification cannot be delivered now, in one line with what to do; None
    when it can. For ``credsync status`` and the agent's start: a missing library or session
    bus otherwise shows only when an alert is already being lost."""
    if not _installed("desktop_notifier", *(() if sys.platform in ("darwin", "win32")
                                            else ("dbus_fast",))):
        return NOT_INSTALLED
    result = (probe if probe is not None else default_probe()).check()
    if result.reachable:
        return None
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS") and sys.platform.startswith("linux"):
        return ("no desktop session (DBUS_SESSION_BUS_ADDRESS is unset): alerts go to "
                "[notify] command or webhook only; set one, or run the agent in a desktop login")
    return (f"no notification server ({result.detail}): alerts go to [notify] command or "
            "webhook only; start a notification daemon, or set one of those")


def build_notifier(settings: NotifySection, *, probe: ServerProbe | None = None) -> FanoutNotifier:
    """The fan-out for ``[notify]``: desktop if enabled, then command, then webhook.

    With the desktop enabled but undeliverable, says so once in the log: this runs once, when
    the agent starts."""
    channels: list[Channel] = []
    if settings.desktop:
        problem = desktop_problem(probe)
        if problem is not None:
            log.warning("desktop notifications: %s", problem)
        channels.append(DesktopNotifier(probe))
    if settings.command:
        channels.append(CommandNotifier(settings.command))
    if settings.webhook:
        channels.append(WebhookNotifier(settings.webhook))
    return FanoutNotifier(channels)
