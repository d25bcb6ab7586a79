"""``credsync doctor``: builds the real collaborators, runs the checks, renders them.

Exit 0 when no check fails (warnings allowed), 1 otherwise. The checks are in
``agent.doctor``; this module only builds, renders and chooses the exit code (through
``agent.cli.main``, which registers it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agent.clock import SystemClock
from agent.doctor import Check, Doctor, Level, exit_code

if TYPE_CHECKING:
    from agent.cli.status import Status
    from agent.config import Settings
    from agent.install.installer import Installer

__all__ = ["build_doctor", "doctor_cmd", "render"]


def build_doctor(config_arg: Path | None) -> Doctor:
    from agent.notify.notifier import default_probe
    from agent.refresh.http import EndpointProbe

    found, settings, problems = _load(config_arg)
    return Doctor(
        config_file=found, config_arg=config_arg, settings=settings, config_problems=problems,
        clock=SystemClock(), env=dict(os.environ), endpoint=EndpointProbe(),
        notify_probe=default_probe(), which=shutil.which, platform=sys.platform,
        backend_name=_backend_name, status=partial(_status, found),
        installer=partial(_installer, found, config_arg))


def _load(config_arg: Path | None) -> tuple[Path, Settings | None, list[str]]:
    """The file looked up, the settings (None when invalid) and the loader's problem lines."""
    from agent.config import config_path, load_settings
    from agent.errors import ConfigError

    try:
        found = config_path(config_arg)
    except ConfigError as exc:
        return Path(os.environ.get("CREDSYNC_CONFIG", "")), None, list(exc.problems)
    try:
        settings, found = load_settings(config_arg)
    except ConfigError as exc:
        return found, None, list(exc.problems)
    except OSError as exc:  # a config dir we may not search: said as the loader would
        from agent.cli.main import os_error_line

        return found, None, [f"{os_error_line(exc)}; or point --config at the config file"]
    return found, settings, []


def _backend_name() -> str:
    from agent.stores.keychain import system_backend

    backend = system_backend()
    close = getattr(backend, "close", None)
    if callable(close):
        close()
    return type(backend).__name__


def _status(found: Path, settings: Settings) -> Status:
    from agent.loop.runtime import collect_status

    return collect_status(settings, found)


def _installer(found: Path, config_arg: Path | None, settings: Settings) -> Installer | None:
    from agent.cli.install import installer_for
    from agent.errors import InstallError

    try:
        return installer_for(settings, found, config_arg)
    except InstallError:
        return None


_MARK = {Level.OK: "ok", Level.WARN: "warn", Level.FAIL: "fail"}


def render(checks: list[Check]) -> str:
    """One line per check: level, name, what was found, and for a warn or fail the fix."""
    lines = []
    for check in checks:
        fix = f"  fix: {check.fix}" if check.level is not Level.OK and check.fix else ""
        lines.append(f"{_MARK[check.level]:<4}  {check.name}: {check.summary}{fix}")
    counts = {level: sum(c.level is level for c in checks) for level in Level}
    lines.append(f"{counts[Level.OK]} ok, {counts[Level.WARN]} warn, {counts[Level.FAIL]} fail")
    return "\n".join(lines)


def to_json(checks: list[Check]) -> dict[str, object]:
    return {"checks": [c.to_json() for c in checks],
            **{level.value: sum(c.level is level for c in checks) for level in Level},
            "exit": exit_code(checks)}


@click.command("doctor")
@click.option("--config", "config_path", type=click.Path(path_type=Path, readable=False),
              default=None, help="Config file (default: $CREDSYNC_CONFIG, else the user config "
                                 "dir).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_cmd(config_path: Path | None, as_json: bool) -> None:
    """Check everything credsync depends on; print the fix for every problem.

    Exit 0 when nothing fails (warnings allowed), 1 otherwise."""
    checks = build_doctor(config_path).run()
    click.echo(json.dumps(to_json(checks), indent=2) if as_json else render(checks))
    sys.exit(exit_code(checks))
