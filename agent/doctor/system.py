"""The keychain, the notification path, the login item and the agent."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from agent.cli.status import Status
from agent.cli.statustext import clean
from agent.config import NotifySection
from agent.doctor.model import Check, fail, ok, warn
from agent.notify.notifier import NOT_INSTALLED, ServerProbe, WebhookNotifier, desktop_problem

__all__ = ["agent_checks", "keychain_checks", "login_item_checks", "notify_checks"]


def keychain_checks(enabled: bool, platform: str, backend: Callable[[], str],
                    status: Status) -> list[Check]:
    """Which backend, and (from the status rows) reachable and unlocked. Items another program
    made (macOS) show as a store that cannot be written, in the store lines."""
    if not enabled and platform != "darwin":
        return [ok("keychain", "off ([claude] keychain = false): files only")]
    if platform == "darwin":
        return [ok("keychain", "Claude Code's own items, through /usr/bin/security"
                   + ("" if enabled else " (read only: [claude] keychain = false)"))]
    try:
        name = backend()
    except Exception as exc:  # any backend failure is the finding, never a traceback
        return [fail("keychain", f"no usable backend: {clean(exc)}",
                     "run inside a desktop login with a Secret Service (gnome-keyring, KeePassXC)"
                     ", or set [claude] keychain = false")]
    rows = [s for s in status.stores if s.kind == "keychain"]
    broken = [s for s in rows if s.state == "error"]
    if broken:
        return [fail("keychain", f"{name}: {clean(broken[0].detail)}", _keychain_fix(broken[0]
                                                                                     .detail))]
    return [ok("keychain", f"{name}: reachable and unlocked")]


def _keychain_fix(detail: str) -> str:
    if "locked" in detail.lower():
        return ("unlock the login keyring (log in to the desktop, or open Passwords and Keys "
                "and unlock it), or set [claude] keychain = false")
    return ("start the desktop's Secret Service (gnome-keyring-daemon --start --components="
            "secrets), or set [claude] keychain = false")


def notify_checks(settings: NotifySection, probe: ServerProbe,
                  which: Callable[[str], str | None]) -> list[Check]:
    """The notifier library, the server, the command and the webhook; and whether an alert
    reaches anyone at all."""
    fallback = bool(settings.command or settings.webhook)
    checks = [_desktop(settings, probe, fallback), _command(settings, which)]
    # Scheme and host only, as the notifier logs it: a webhook's path often holds its secret.
    shown = WebhookNotifier(settings.webhook).safe_url if settings.webhook else ""
    checks.append(ok("notify webhook", f"set ({shown})") if shown
                  else ok("notify webhook", "not set"))
    return checks


def _desktop(settings: NotifySection, probe: ServerProbe, fallback: bool) -> Check:
    if not settings.desktop:
        if fallback:
            return ok("notifications", "desktop off; command or webhook set")
        return fail("notifications", "desktop off and no command or webhook: a re-login "
                    "alert reaches nobody", "set [notify] desktop = true, or [notify] command "
                    "or webhook")
    problem = desktop_problem(probe)
    if problem is None:
        return ok("notifications", "a notification server is reachable and the notifier is "
                  "installed")
    level = warn if fallback else fail
    if problem == NOT_INSTALLED:
        return level("notifications", "desktop-notifier is not installed",
                     f"{sys.executable} -m pip install 'desktop-notifier>=6'")
    what = problem.split("; ")[0]
    if "DBUS_SESSION_BUS_ADDRESS" in problem:
        return level("notifications", what, "run the agent inside a desktop login, or set "
                     "[notify] command or webhook")
    return level("notifications", what, "start a notification daemon (your desktop's, or "
                 "dunst), or set [notify] command or webhook")


def _command(settings: NotifySection, which: Callable[[str], str | None]) -> Check:
    if not settings.command:
        return ok("notify command", "not set")
    program = settings.command[0]
    found = program if os.path.isabs(program) and os.access(program, os.X_OK) else \
        (which(program) if not os.path.isabs(program) else None)
    if found is None:
        return fail("notify command", f"{clean(program)} is not found or not executable",
                    "fix [notify] command in the config: the first word must be a program "
                    "on PATH or an absolute path")
    return ok("notify command", f"set ({clean(found)})")


class InstallerLike(Protocol):
    def matches(self) -> bool | None: ...


def login_item_checks(item: Mapping[str, Any] | None, installer: InstallerLike | None,
                      install_cmd: str) -> list[Check]:
    """Installed, enabled, running, and the same program, config and environment."""
    if item is None:
        return []
    if not item.get("installed"):
        detail = clean(item.get("detail") or "not installed")
        return [warn("login item", f"{detail}: the agent does not start at login", install_cmd)]
    path = clean(item.get("path") or "")
    checks = []
    if item.get("enabled") is False:
        checks.append(fail("login item", f"{path}: disabled", install_cmd))
    elif item.get("enabled") is None:
        checks.append(warn("login item", f"{path}: state unknown "
                           f"({clean(item.get('detail') or '')})", install_cmd))
    else:
        active = {True: "running", False: "not running", None: "state unknown"}[
            item.get("active")]
        checks.append(ok("login item", f"{path}: enabled, {active}"))
    same = installer.matches() if installer is not None else None
    if same is False:
        checks.append(warn("login item config", "it runs another program, config file or "
                           "environment than this one", install_cmd))
    elif same:
        checks.append(ok("login item config", "runs this installation with this config"))
    return checks


def agent_checks(status: Status, install_cmd: str, state_dir: Path) -> list[Check]:
    pid = status.pid if status.pid and status.pid > 0 else None
    state = status.agent_state
    if not status.running:
        return [fail("agent", "not running: nothing refreshes ahead of the sessions",
                     f"{install_cmd} (or `credsync run` in a terminal)")]
    if pid is None:
        return [warn("agent", f"running, but {state_dir}/agent.pid is unreadable",
                     f"restart the agent (stop it, then `credsync run`); check {state_dir}")]
    if state == "stopped":
        return [fail("agent", f"pid {pid} is stopped (SIGSTOP or a debugger): it holds the "
                     "locks and does nothing", f"kill -CONT {pid}")]
    if state == "not responding":
        return [fail("agent", f"pid {pid} has not finished a round for over 150 s",
                     f"kill {pid}, then start it again (`credsync run`, or "
                     "`systemctl --user restart credsync.service`)")]
    return [ok("agent", f"running (pid {pid}), its last round is recent")]
