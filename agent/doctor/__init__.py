"""``credsync doctor``: one line per check, ok / warn / fail, each warn or fail with its fix.

Each check is a small function of its collaborators (settings, the status report, a clock, an
endpoint probe, a notification-server probe, the installer), returning ``Check`` values; the
CLI builds the real collaborators and only renders. The store, login and agent answers are
``credsync status``'s own (``agent.cli.status.collect``), so the two commands never disagree.

    config            found, valid (strict loader), private
    login             the winner rule's verdict; one login or several across the dirs
    login in DIR / keychain / sink:...   every store, as status judges it
    file DIR/.credentials.json           present, plain file, yours, private, symlink shown
    lock PATH         the CLI's lock dirs: held by whom, stale, left by a dead credsync
    keychain          backend, reachable, unlocked; macOS: items another program made
    notifications, notify command, notify webhook
    login item, login item config        installed, enabled, running, same config
    agent             running, responsive, not stopped
    token endpoint    reachable over TLS, no token sent
    clock             plausible, and against the token server's Date
    environment       CLAUDE_CONFIG_DIR / CLAUDE_SECURESTORAGE_CONFIG_DIR against the config
    mcp SERVER        Claude Code's MCP connector tokens per config dir, read only
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.cli.status import Status
from agent.cli.statustext import clean
from agent.clock import Clock
from agent.config import Settings
from agent.doctor.codex import codex_environment_check, codex_login_check, renamed
from agent.doctor.files import config_checks, credential_file_check
from agent.doctor.locks import lock_checks
from agent.doctor.login import login_checks, mcp_checks, store_checks
from agent.doctor.model import Check, Level, fail
from agent.doctor.network import Endpoint, clock_check, endpoint_check, environment_checks
from agent.doctor.system import (
    InstallerLike,
    agent_checks,
    keychain_checks,
    login_item_checks,
    notify_checks,
)
from agent.errors import CredsyncError
from agent.notify.notifier import ServerProbe

__all__ = ["Check", "Doctor", "Level", "exit_code"]


@dataclass
class Doctor:
    """The collaborators; ``status`` and ``installer`` are built only when the config loads."""

    config_file: Path
    config_arg: Path | None  # --config as given: the fixes repeat it
    settings: Settings | None
    config_problems: list[str]
    clock: Clock
    env: Mapping[str, str]
    endpoint: Endpoint
    notify_probe: ServerProbe
    which: Callable[[str], str | None]
    platform: str
    backend_name: Callable[[], str]
    status: Callable[[Settings], Status] | None = None
    installer: Callable[[Settings], InstallerLike | None] | None = None

    def install_cmd(self) -> str:
        return f"`credsync install --config {self.config_arg}`" if self.config_arg else \
            "`credsync install`"

    def run(self) -> list[Check]:
        checks = config_checks(self.config_file, self.settings, self.config_problems)
        settings = self.settings
        if settings is None:
            # Without valid settings nothing below is known: which dirs, which store, which URL.
            return [*checks, *notify_checks_default(self)]
        status, trouble = self._status(settings)
        checks += trouble
        dirs = list(settings.claude.config_dirs)
        if status is not None:
            checks += login_checks(status)
            checks += store_checks(status)
        checks += [credential_file_check(d) for d in dirs]
        checks += lock_checks(dirs, self.clock)
        if status is not None:
            checks += keychain_checks(settings.claude.keychain, self.platform,
                                      self.backend_name, status)
        checks += notify_checks(settings.notify, self.notify_probe, self.which)
        if status is not None:
            item = status.extra.get("login_item")
            installer = self.installer(settings) if self.installer is not None else None
            checks += login_item_checks(item if isinstance(item, dict) else None, installer,
                                        self.install_cmd())
            checks += agent_checks(status, self.install_cmd(), Path(status.state_dir))
        endpoint, answer = endpoint_check(settings.refresh.token_url, settings.refresh.enabled,
                                          self.endpoint)
        checks += [endpoint, clock_check(self.clock, answer)]
        if dirs:  # [claude] config_dirs = []: the Claude side is off on purpose
            checks += environment_checks(self.env, dirs, self.config_file,
                                         settings.claude.securestorage_dir)
        if settings.codex.enabled:
            checks += self._codex(settings, status)
        if status is not None:
            checks += mcp_checks(status.mcp)
        return checks


    def _codex(self, settings: Settings, status: Status | None) -> list[Check]:
        checks = codex_login_check(status) if status is not None else []
        checks += codex_environment_check(self.env, list(settings.codex.homes),
                                          self.config_file)
        endpoint, _ = endpoint_check(settings.codex.token_url, settings.refresh.enabled,
                                     self.endpoint)
        return [*checks, renamed(endpoint, "codex endpoint", "[codex] token_url")]

    def _status(self, settings: Settings) -> tuple[Status | None, list[Check]]:
        if self.status is None:
            return None, []
        try:
            return self.status(settings), []
        except CredsyncError as exc:  # e.g. a state dir that cannot be read
            return None, [fail("status", clean(exc), "fix the path named, then run "
                               "`credsync doctor` again")]


def notify_checks_default(doctor: Doctor) -> list[Check]:
    """With a broken config: the notification path under the defaults still says something."""
    from agent.config import NotifySection

    return notify_checks(NotifySection(), doctor.notify_probe, doctor.which)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.level is Level.FAIL for c in checks) else 0
