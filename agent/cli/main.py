"""The command line. Only this module (and its fast path, ``agent.cli.fastpath``) prints or chooses
exit codes.

Exit codes: 0 success; 1 a runtime failure (message on stderr); 2 bad configuration or usage;
3 a re-login is required.
"""

from __future__ import annotations

import errno
import json
import logging
import queue
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from agent.errors import ConfigError, CredsyncError

EXIT_FAILURE, EXIT_CONFIG, EXIT_RELOGIN = 1, 2, 3

config_option = click.option(
    # readable=False: an unreadable file is load()'s to report, in one line with the fix.
    "--config", "config_path", type=click.Path(path_type=Path, readable=False), default=None,
    help="Config file (default: $CREDSYNC_CONFIG, else the user config dir).")


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"credsync: {message}", err=True)
    sys.exit(code)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Map credsync's errors to one line and an exit code: never a traceback."""
    from agent.errors import ReloginRequired

    try:
        yield
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(f"credsync: {line}", err=True)
        sys.exit(EXIT_CONFIG)
    except ReloginRequired as exc:
        fail(str(exc), EXIT_RELOGIN)
    except CredsyncError as exc:
        fail(str(exc))
    except OSError as exc:
        # Last resort: every boundary maps its OSErrors to a CredsyncError, but a file that is
        # a directory, a FIFO or unreadable must never show a traceback even where one slips.
        fail(os_error_line(exc))


def os_error_line(exc: OSError) -> str:
    """One line for an unexpected OSError: the file it names and what to do about it."""
    where = exc.filename
    reason = exc.strerror or str(exc)
    if where is None:
        return f"{reason}; move it away or fix it (credsync needs a plain, readable file there)"
    hint = _OS_HINTS.get(exc.errno or 0, "check that file")
    return f"cannot use {where}: {reason}; {hint}"


_OS_HINTS = {
    errno.EACCES: "fix its permissions (chmod u+rw, u+rwx on its directory) or remove it",
    errno.EPERM: "fix its permissions (chmod u+rw, u+rwx on its directory) or remove it",
    errno.EISDIR: "move that directory away, credsync needs a plain file there",
    errno.ENOTDIR: "a part of that path is a file, not a directory: fix the path",
    errno.ELOOP: "it is a symlink loop: remove the link or point it at a file",
    errno.ENXIO: "it is a FIFO or a device: move it away, credsync needs a plain file there",
    errno.ENOSPC: "the disk is full: free some space",
    errno.EROFS: "the filesystem is read-only: choose a writable location",
}


def load(config_path: Path | None) -> tuple[Any, Path]:
    from agent.config import load_settings

    try:
        return load_settings(config_path)
    except OSError as exc:  # e.g. a config dir we may not search: a config problem, exit 2
        raise ConfigError([f"{os_error_line(exc)}; or point --config at the config file"]) \
            from exc


def version_line() -> str:
    """credsync's version and the Claude Code releases whose behaviour it was checked against
    (the releases ``agent.sim.session`` models, besides its pre-2.1.332 "current" model)."""
    from importlib.metadata import PackageNotFoundError, version

    from agent.sim.session import Release

    try:
        own = version("credsync")
    except PackageNotFoundError:  # run from a checkout that was never installed
        own = "unknown (not installed)"
    checked = sorted((r.value for r in Release if r is not Release.CURRENT),
                     key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)
    return f"credsync {own}\nchecked against Claude Code {' and '.join(checked)}"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(version_line())
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show the version and the Claude Code releases "
                                            "checked against, then exit.")
def main() -> None:
    """Keep every copy of your Claude Code login fresh and in step."""


@contextmanager
def signals_to_queue(events: queue.Queue[object]) -> Iterator[None]:
    """SIGTERM/SIGINT only enqueue a Stop; the loop ends itself. Old handlers are restored.

    A Python handler runs only when the main thread next runs Python code, and the kernel may
    hand a process signal to any thread (it does so right after a SIGCONT, for one): the main
    thread, asleep in the queue's wait for up to the next deadline, would not see it for
    minutes. So, where there is one, the signal's wake-up fd is read by a small thread, which
    enqueues the Stop at once, from whichever thread the signal arrived on."""
    from agent.loop.agent import Stop

    reader = _WakeupReader(events, Stop) if hasattr(signal, "set_wakeup_fd") and \
        sys.platform != "win32" else None

    def handler(signum: int, _frame: FrameType | None) -> None:
        if reader is None:
            events.put(Stop(signal.Signals(signum).name))
        # else: the reader thread already enqueued it from the wake-up fd

    old: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        old[signum] = signal.signal(signum, handler)
    previous_fd = reader.start() if reader is not None else None
    try:
        yield
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)
        if reader is not None:
            reader.stop(previous_fd)


class _WakeupReader:
    """Reads the signal numbers CPython's C-level handler writes to the wake-up fd (from any
    thread) and enqueues a Stop for SIGTERM and SIGINT."""

    def __init__(self, events: queue.Queue[object], stop: Callable[[str], object]) -> None:
        import os
        import threading

        self._events = events
        self._stop = stop
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # the C handler must never block
        self._thread = threading.Thread(target=self._run, name="credsync-signals", daemon=True)

    def start(self) -> int:
        previous = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread.start()
        return previous

    def _run(self) -> None:
        import os

        while True:
            data = os.read(self._read_fd, 64)
            if not data:  # the write end closed: stop() was called
                return
            for number in data:
                if number in (signal.SIGTERM, signal.SIGINT):
                    self._events.put(self._stop(signal.Signals(number).name))

    def stop(self, previous_fd: int | None) -> None:
        import os

        signal.set_wakeup_fd(previous_fd if previous_fd is not None else -1)
        os.close(self._write_fd)
        self._thread.join(timeout=2.0)
        os.close(self._read_fd)


@main.command()
@config_option
def run(config_path: Path | None) -> None:
    """Run the agent in the foreground (logs to stderr and the log file)."""
    with errors_to_exit():
        settings, path = load(config_path)
        from agent.cli.logsetup import setup_logging
        from agent.loop.runtime import run_agent

        setup_logging(settings.agent.log_level, settings.agent.log_file)
        events: queue.Queue[object] = queue.Queue()
        with signals_to_queue(events):
            reason = run_agent(settings, path, events)
        logging.getLogger("credsync").info("stopped (%s)", reason)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in README).")
def status(config_path: Path | None, as_json: bool) -> None:
    """Show every store's state, the login, and whether the agent runs."""
    with errors_to_exit():
        settings, path = load(config_path)
        from agent.cli.status import render_text
        from agent.loop.runtime import collect_status

        report = collect_status(settings, path)
        if as_json:
            click.echo(json.dumps(report.to_json(), indent=2))
        else:
            click.echo(render_text(report))


def quiet_logging(settings: Any) -> None:
    """One-shot commands log to the log file only: their output is one line (or the token)."""
    from agent.cli.logsetup import setup_logging

    setup_logging(settings.agent.log_level, settings.agent.log_file, stderr=False)


@main.command()
@config_option
@click.option("--codex", is_flag=True, help="Codex's access token instead of Claude Code's (of "
              "$CODEX_HOME's account when the homes hold logins of several).")
def token(config_path: Path | None, codex: bool) -> None:
    """Print a valid access token (refreshing under the locks when it is due).

    The only command that prints a token. Exit 3 when a re-login is required.
    """
    if codex:
        with errors_to_exit():
            settings, _ = load(config_path)
            quiet_logging(settings)
            from agent.loop.runtime import codex_token

            value = codex_token(settings)
        click.echo(value)
        return
    with errors_to_exit():
        from agent.cli.tokennote import Note
        from agent.config import config_path as chosen_config

        note: Note | None = None
        fresh = Note(str(config_path) if config_path is not None else None)
        try:
            fresh.begin(str(chosen_config(config_path)))  # read before the settings are
            note = fresh
        except OSError:
            pass  # an unreadable config file: no note this time, load() below says why
        settings, _ = load(config_path)
        quiet_logging(settings)
        from agent.loop.runtime import valid_token

        value = valid_token(settings, note)
    click.echo(value)


@main.command()
@config_option
def refresh(config_path: Path | None) -> None:
    """Refresh the login now, under the locks; print the outcome in one line.

    Exit 3 when a re-login is required or the user logged out (nothing is sent then).
    """
    with errors_to_exit():
        settings, _ = load(config_path)
        quiet_logging(settings)
        from agent.loop.runtime import refresh_now

        outcome = refresh_now(settings)
        cred = outcome.credential
        shown = f" {cred.fingerprint}, expires {_iso(cred.expires_at)}" if cred else ""
        click.echo(f"{outcome.kind}:{shown} ({outcome.message})")
    if outcome.kind in ("relogin-required", "logged-out"):
        sys.exit(EXIT_RELOGIN)
    if not outcome.ok:
        sys.exit(EXIT_FAILURE)


def _iso(ts: float) -> str:
    from agent.cli.status import iso

    return iso(ts) or "-"


def _register_optional() -> None:
    # Commands that live in their own modules, registered here so that only the CLI prints.
    from agent.cli.cluster import cluster_cmd
    from agent.cli.demo import demo_cmd
    from agent.cli.doctor import doctor_cmd

    main.add_command(demo_cmd, "demo")
    main.add_command(cluster_cmd, "cluster")
    main.add_command(doctor_cmd, "doctor")
    try:
        from agent.cli.install import install_cmd, uninstall_cmd
    except ImportError:  # pragma: no cover - during development only
        return
    main.add_command(install_cmd, "install")
    main.add_command(uninstall_cmd, "uninstall")


_register_optional()
