"""`credsync install` and `credsync uninstall`, and the login-item part of `credsync status`.

Registered into the main click group by ``agent.cli.main``; also runnable alone as
``python -m agent.cli.install install|uninstall [--dry-run] [--config PATH]``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import click

from agent import paths
from agent.config import Settings, load_settings
from agent.errors import ConfigError, InstallError
from agent.install.installer import (
    Installer,
    MakeDir,
    Plan,
    Platform,
    Remove,
    Run,
    Runner,
    Step,
    Write,
    default_program,
    format_argv,
    subprocess_runner,
)

__all__ = ["build_installer", "current_platform", "install_cmd", "installer_for",
           "login_item_status",
           "uninstall_cmd"]

EXIT_FAILED = 1
EXIT_CONFIG = 2


def current_platform() -> Platform:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform in ("darwin", "win32"):
        return sys.platform  # type: ignore[return-value]
    raise InstallError(f"no login item support on {sys.platform}; start `credsync run` from "
                       "your session's startup scripts instead")


CODEX_DIR_VARS = ("CODEX_HOME",)


def carried_environment(env: Mapping[str, str] | None = None,
                        names: tuple[str, ...] = paths.CLAUDE_DIR_VARS) -> dict[str, str]:
    """The variables that choose the CLI's config dir (or Codex's home), as the login item
    must set them: its agent starts without this shell's environment, and would otherwise
    watch ~/.claude (~/.codex). A relative value is made absolute here (the agent starts in
    another directory)."""
    env = os.environ if env is None else env
    return {name: os.path.abspath(os.path.expanduser(env[name])) if env[name] else ""
            for name in names if name in env}


def build_installer(log_file: Path | None, config: Path | None = None,
                    runner: Runner | None = None,
                    environment: Mapping[str, str] | None = None) -> Installer:
    """The installer for this machine, running this installation's interpreter."""
    platform = current_platform()
    config_home = os.environ.get("XDG_CONFIG_HOME", "")
    log_dir = (log_file or paths.default_log_file()).parent
    return Installer(
        runner or subprocess_runner, Path.home(), platform,
        default_program(sys.executable, platform), Path(os.path.abspath(log_dir)),
        config_path=Path(os.path.abspath(config)) if config else None,
        config_home=Path(config_home) if os.path.isabs(config_home) else None,
        environment=environment)


def installer_for(settings: Settings, found: Path, explicit: Path | None,
                  runner: Runner | None = None) -> Installer:
    """The installer ``credsync install`` builds for these settings (``doctor`` compares the
    installed login item with what it would write)."""
    # The login item does not see this shell's CREDSYNC_CONFIG: pin a chosen file by path.
    chosen = explicit or os.environ.get("CREDSYNC_CONFIG")
    pinned = found if chosen and found.is_file() else None
    # Only when the config does not list the dirs: then the variables chose them.
    chosen_by_env = "config_dirs" not in settings.claude.model_fields_set
    environment = carried_environment() if chosen_by_env else {}
    if "homes" not in settings.codex.model_fields_set:  # Codex's homes came from CODEX_HOME
        environment.update(carried_environment(names=CODEX_DIR_VARS))
    return build_installer(settings.agent.log_file, pinned, runner=runner,
                           environment=environment)


def login_item_status(settings: Settings | None = None,
                      runner: Runner | None = None) -> dict[str, object]:
    """For `credsync status`: is the login item installed, where, is the agent running."""
    log_file = settings.agent.log_file if settings else paths.default_log_file()
    try:
        status = build_installer(log_file, runner=runner).status()
    except InstallError as exc:
        return {"installed": False, "path": None, "enabled": None, "active": None,
                "detail": str(exc), "log_file": str(log_file) if log_file else None}
    return {"installed": status.installed, "path": str(status.path), "enabled": status.enabled,
            "active": status.active, "detail": status.detail,
            "log_file": str(log_file) if log_file else None}


_dry_run = click.option("--dry-run", is_flag=True,
                        help="Print the file and the exact commands; change nothing.")
_config = click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                       default=None, help="Config file the installed agent will use.")


@click.command("install")
@_dry_run
@_config
def install_cmd(dry_run: bool, config: Path | None) -> None:
    """Install credsync as a login item (systemd user unit, LaunchAgent or scheduled task)."""
    explicit = config or _root_config()
    try:
        # Validated first: a login item with a broken config would only crash-loop.
        settings, found = load_settings(explicit)
        installer = installer_for(settings, found, explicit)
        plan = installer.install(dry_run=dry_run)
    except ConfigError as exc:
        _fail("\ncredsync: ".join(exc.problems), EXIT_CONFIG)
    except InstallError as exc:
        _fail(str(exc), EXIT_FAILED)
    _report(plan, installer, dry_run, settings.agent.log_file)
    click.echo(_watched(settings))


@click.command("uninstall")
@_dry_run
@_config
def uninstall_cmd(dry_run: bool, config: Path | None) -> None:
    """Stop the login item and remove it; succeeds when there is none."""
    del config  # accepted for symmetry with install; removal does not depend on the config
    try:
        installer = build_installer(None)
        plan = installer.uninstall(dry_run=dry_run)
    except InstallError as exc:
        _fail(str(exc), EXIT_FAILED)
    _report(plan, installer, dry_run, None)


def _root_config() -> Path | None:
    # When the main group takes --config itself, honour it here too.
    ctx = click.get_current_context(silent=True)
    value = ctx.find_root().params.get("config") if ctx else None
    return Path(value) if isinstance(value, (str, Path)) else None


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"credsync: {message}", err=True)
    raise SystemExit(code)


def _report(plan: Plan, installer: Installer, dry_run: bool, log_file: Path | None) -> None:
    platform = current_platform()
    if plan.note:
        click.echo(plan.note)
    if not plan.steps:
        return
    click.echo(f"Dry run of `credsync {plan.action}`: nothing was changed. It would, in order:"
               if dry_run else f"credsync {plan.action}: done, in order:")
    for number, step in enumerate(plan.steps, 1):
        click.echo(f"  {number}. {_describe(step, platform)}")
    if dry_run and plan.content is not None:
        click.echo(f"--- {plan.path} ---\n{plan.content.rstrip()}\n--- end of {plan.path} ---")
    if not dry_run and plan.action == "install":
        click.echo(_how_to_check(installer, platform, log_file))


def _watched(settings: Settings) -> str:
    """Which config dirs the installed agent watches, and what chose them."""
    dirs = ", ".join(str(d) for d in settings.claude.config_dirs)
    if "config_dirs" in settings.claude.model_fields_set:
        return f"The agent will watch: {dirs} (claude.config_dirs)"
    carried = [name for name in paths.CLAUDE_DIR_VARS if name in os.environ]
    source = f"{carried[0]}, carried into the login item" if carried else "the default"
    return f"The agent will watch: {dirs} ({source})"


def _describe(step: Step, platform: Platform) -> str:
    if isinstance(step, Run):
        tail = "   (may fail when there is nothing to stop)" if step.may_fail else ""
        return f"run: {format_argv(step.argv, platform)}{tail}"
    if isinstance(step, Write):
        return f"write {step.path}"
    if isinstance(step, Remove):
        return f"remove {step.path}"
    assert isinstance(step, MakeDir)
    return f"create directory {step.path}"


def _how_to_check(installer: Installer, platform: Platform, log_file: Path | None) -> str:
    log = f"Log file: {log_file}" if log_file else "Log file: none ([agent] log_file is empty)"
    if platform == "linux":
        return (f"Check it runs: systemctl --user status credsync.service\n{log}\n"
                "Also: journalctl --user -u credsync.service")
    if platform == "darwin":
        return (f"Check it runs: launchctl print gui/{os.getuid()}/com.credsync.agent\n{log}")
    return f"Check it runs: schtasks /Query /TN credsync /V /FO LIST\n{log}"


@click.group()
def _main() -> None:
    """Login item commands of credsync, standalone."""


_main.add_command(install_cmd)
_main.add_command(uninstall_cmd)

if __name__ == "__main__":
    _main()
