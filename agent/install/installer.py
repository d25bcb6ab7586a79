"""Install credsync as a login item: a systemd user unit, a LaunchAgent, or a scheduled task.

The ``render_*`` functions are pure: program argv in, file text out, from the templates shipped in
``agent.install.templates`` (identical copies live in ``packaging/``). ``Installer`` turns a
rendering into a ``Plan`` (the file, its content, every step in order) and executes it through an
injected command runner, so tests replace the service manager without monkeypatching.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath
from string import Template
from typing import Literal
from xml.sax.saxutils import escape

from agent.errors import InstallError, StoreError
from agent.fsutil import atomic_write, ensure_private_dir

__all__ = [
    "LABEL", "TASK_NAME", "TEMPLATE_NAMES", "UNIT_NAME", "Installer", "LoginItemStatus",
    "MakeDir", "Plan", "Platform", "Remove", "Run", "Runner", "Step", "Write", "default_program",
    "format_argv", "launchd_log_paths", "load_template", "render_launchd_plist",
    "render_systemd_unit", "render_task_xml", "subprocess_runner", "systemd_environment_line",
    "systemd_exec_line",
]

Platform = Literal["linux", "darwin", "win32"]
# argv -> (exit status, stdout, stderr); it never raises for a failing or missing command.
Runner = Callable[[Sequence[str]], tuple[int, str, str]]

LABEL = "com.credsync.agent"
UNIT_NAME = "credsync.service"
TASK_NAME = "credsync"
TEMPLATE_NAMES: dict[Platform, str] = {
    "linux": "credsync.service",
    "darwin": "com.credsync.agent.plist",
    "win32": "credsync-task.xml",
}
TEMPLATE_PACKAGE = "agent.install.templates"
COMMAND_TIMEOUT_S = 60.0
LAUNCHCTL_NO_SUCH_SERVICE = 113
_FILE_MODE = 0o644  # service managers read these; they hold no secret

_SYSTEMD_PLAIN = re.compile(r"[A-Za-z0-9_./:=@+,-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def subprocess_runner(argv: Sequence[str],
                      timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[int, str, str]:
    """Run ``argv``; a missing program or a hang becomes an exit status, like a shell would say."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, errors="replace",
                              stdin=subprocess.DEVNULL, timeout=timeout_s, check=False)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{argv[0]}: no answer within {timeout_s:g} s"
    except OSError as exc:
        return 126, "", f"{argv[0]}: {exc.strerror or exc}"
    return done.returncode, done.stdout, done.stderr


def load_template(name: str) -> Template:
    text = resources.files(TEMPLATE_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    return Template(text)


def default_program(executable: str, platform: Platform) -> list[str]:
    """The argv that runs this installation's agent: its own interpreter, by absolute path."""
    # abspath, not realpath: a venv's python is a symlink whose location selects the venv.
    python = os.path.abspath(executable)
    if platform == "win32":
        pythonw = Path(python).with_name("pythonw.exe")
        if pythonw.is_file():  # no console window at every logon
            python = str(pythonw)
    return [python, "-m", "agent.cli", "run"]


def format_argv(argv: Sequence[str], platform: Platform) -> str:
    return subprocess.list2cmdline(argv) if platform == "win32" else shlex.join(argv)


# ---- rendering (pure) -------------------------------------------------------------------------

def systemd_quote(arg: str, executable: bool = False) -> str:
    """One ExecStart word. '%' (a unit specifier) is doubled everywhere; '$' only in arguments,
    since systemd expands variables there but never in the executable's path."""
    escaped = arg.replace("%", "%%")
    if executable:
        if any(c in arg for c in "\"'\\"):
            raise InstallError(f"systemd refuses an executable path holding quotes or "
                               f"backslashes: {arg!r}; install credsync under a plainer path")
    else:
        escaped = escaped.replace("$", "$$")
    if _SYSTEMD_PLAIN.fullmatch(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_exec_line(program: Sequence[str]) -> str:
    return " ".join(systemd_quote(arg, executable=index == 0)
                    for index, arg in enumerate(program))


def systemd_environment_line(name: str, value: str) -> str:
    """One ``Environment=`` assignment, quoted: systemd expands ``%`` specifiers there (not
    ``$``) and reads C-style escapes inside double quotes."""
    escaped = f"{name}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{escaped}"'


def render_systemd_unit(program: Sequence[str],
                        environment: Mapping[str, str] | None = None) -> str:
    lines = "".join("\n" + systemd_environment_line(k, v)
                    for k, v in sorted((environment or {}).items()))
    return load_template(TEMPLATE_NAMES["linux"]).substitute(
        exec_start=systemd_exec_line(program), environment=lines)


def launchd_log_paths(log_dir: Path) -> tuple[Path, Path]:
    """Where launchd puts the agent's stdout and stderr (crashes before logging is set up)."""
    return log_dir / "launchd.stdout.log", log_dir / "launchd.stderr.log"


def render_launchd_plist(program: Sequence[str], log_dir: Path,
                         environment: Mapping[str, str] | None = None) -> str:
    stdout_path, stderr_path = launchd_log_paths(log_dir)
    arguments = "\n".join(f"\t\t<string>{escape(arg)}</string>" for arg in program)
    variables = "".join(f"\n\t\t<key>{escape(k)}</key>\n\t\t<string>{escape(v)}</string>"
                        for k, v in sorted((environment or {}).items()))
    return load_template(TEMPLATE_NAMES["darwin"]).substitute(
        label=LABEL, program_arguments=arguments, environment=variables,
        stdout_path=escape(str(stdout_path)), stderr_path=escape(str(stderr_path)))


def render_task_xml(program: Sequence[str], user_id: str, working_directory: str) -> str:
    body = load_template(TEMPLATE_NAMES["win32"]).substitute(
        user_id=escape(user_id),
        command=escape(subprocess.list2cmdline(program[:1])),
        arguments=escape(subprocess.list2cmdline(program[1:])),
        working_directory=escape(working_directory))
    # The declaration names UTF-16 because the file is written so; schtasks expects it.
    return '<?xml version="1.0" encoding="UTF-16"?>\n' + body


# ---- plans ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    # Undoing what may not be there (stopping an agent that is not loaded) may fail harmlessly.
    may_fail: bool = False


@dataclass(frozen=True)
class Write:
    path: Path
    data: bytes


@dataclass(frozen=True)
class Remove:
    path: Path


@dataclass(frozen=True)
class MakeDir:
    path: Path


Step = Run | Write | Remove | MakeDir


@dataclass(frozen=True)
class Plan:
    action: Literal["install", "uninstall"]
    path: Path
    content: str | None  # the file install writes; None for uninstall
    steps: tuple[Step, ...]
    note: str = ""

    @property
    def commands(self) -> tuple[tuple[str, ...], ...]:
        return tuple(step.argv for step in self.steps if isinstance(step, Run))


@dataclass(frozen=True)
class LoginItemStatus:
    installed: bool  # the login item's file is present
    path: Path
    enabled: bool | None  # registered with the service manager; None when it cannot tell
    active: bool | None  # the agent is running under it; None when it cannot tell
    detail: str


# ---- the installer --------------------------------------------------------------------------

class Installer:
    def __init__(
        self,
        runner: Runner,
        home: Path,
        platform: Platform,
        program: Sequence[str],
        log_dir: Path,
        config_path: Path | None = None,
        *,
        config_home: Path | None = None,
        uid: int | None = None,
        user_id: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """``program`` is the agent's argv (absolute first element); ``config_path``, when
        given, is passed to it as ``--config``. ``config_home`` is $XDG_CONFIG_HOME (Linux),
        ``uid`` the launchd gui domain (macOS), ``user_id`` DOMAIN\\user (Windows).
        ``environment`` is what the login item sets for the agent (the variables that chose
        the config dirs in the installing shell)."""
        self._runner = runner
        self._home = home
        self._platform: Platform = platform
        self._program = [*program, *(["--config", str(config_path)] if config_path else [])]
        self._log_dir = log_dir
        self._config_home = config_home or home / ".config"
        self._uid = uid
        self._user_id = user_id
        self._environment = dict(environment or {})

    @property
    def program(self) -> list[str]:
        return list(self._program)

    @property
    def path(self) -> Path:
        if self._platform == "linux":
            return self._config_home / "systemd" / "user" / UNIT_NAME
        if self._platform == "darwin":
            return self._home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        return self._home / "AppData" / "Local" / "credsync" / TEMPLATE_NAMES["win32"]

    def render(self) -> str:
        _check_program(self._program, self._platform)
        _check_environment(self._environment, self._platform)
        if self._platform == "linux":
            return render_systemd_unit(self._program, self._environment)
        if self._platform == "darwin":
            return render_launchd_plist(self._program, self._log_dir, self._environment)
        return render_task_xml(self._program, self._windows_user(), str(self._home))

    def _encode(self, content: str) -> bytes:
        return content.encode("utf-16" if self._platform == "win32" else "utf-8")

    def plan_install(self) -> Plan:
        content = self.render()
        data = self._encode(content)
        current = _read(self.path)
        steps = [Write(self.path, data), *self._load_steps(changed=current not in (None, data))]
        if self._platform == "darwin":
            # launchd opens StandardOutPath before exec and does not create its directory.
            steps.insert(0, MakeDir(self._log_dir))
        note = ("" if current is None else
                "updates the installed login item" if current != data else
                "the login item is already up to date; reloading it")
        return Plan("install", self.path, content, tuple(steps), note)

    def plan_uninstall(self) -> Plan:
        if not self.path.exists():
            return Plan("uninstall", self.path, None, (),
                        f"credsync is not installed as a login item ({self.path} does not "
                        "exist); nothing to do")
        return Plan("uninstall", self.path, None, self._unload_steps())

    def install(self, dry_run: bool = False) -> Plan:
        plan = self.plan_install()
        if not dry_run:
            self._execute(plan)
        return plan

    def uninstall(self, dry_run: bool = False) -> Plan:
        plan = self.plan_uninstall()
        if not dry_run:
            self._execute(plan)
        return plan

    def matches(self) -> bool | None:
        """Is the installed login item the one ``install`` would write now (same program,
        config and environment)? None when none is installed."""
        current = _read(self.path)
        if current is None:
            return None
        try:
            return current == self._encode(self.render())
        except InstallError:
            return False

    def status(self) -> LoginItemStatus:
        if not self.path.exists():
            return LoginItemStatus(False, self.path, False, None, "not installed")
        if self._platform == "linux":
            return self._status_linux()
        if self._platform == "darwin":
            return self._status_darwin()
        return self._status_win32()

    # ---- per platform -----------------------------------------------------------------------

    def _load_steps(self, changed: bool) -> list[Step]:
        if self._platform == "linux":
            ctl = ("systemctl", "--user")
            steps: list[Step] = [Run((*ctl, "daemon-reload")), Run((*ctl, "enable", "--now",
                                                                         UNIT_NAME))]
            if changed:  # enable --now leaves a running agent on the old unit
                steps.append(Run((*ctl, "restart", UNIT_NAME)))
            return steps
        if self._platform == "darwin":
            return [Run(("launchctl", "bootout", self._service_target()), may_fail=True),
                    Run(("launchctl", "bootstrap", self._gui_domain(), str(self.path)))]
        return [Run(("schtasks", "/End", "/TN", TASK_NAME), may_fail=True),
                Run(("schtasks", "/Create", "/TN", TASK_NAME, "/XML", str(self.path), "/F")),
                Run(("schtasks", "/Run", "/TN", TASK_NAME))]

    def _unload_steps(self) -> tuple[Step, ...]:
        if self._platform == "linux":
            ctl = ("systemctl", "--user")
            return (Run((*ctl, "disable", "--now", UNIT_NAME)), Remove(self.path),
                    Run((*ctl, "daemon-reload")))
        if self._platform == "darwin":
            return (Run(("launchctl", "bootout", self._service_target()), may_fail=True),
                    Remove(self.path))
        return (Run(("schtasks", "/End", "/TN", TASK_NAME), may_fail=True),
                Run(("schtasks", "/Delete", "/TN", TASK_NAME, "/F")), Remove(self.path))

    def _status_linux(self) -> LoginItemStatus:
        rc, out, err = self._runner(("systemctl", "--user", "show", UNIT_NAME,
                                     "--property=UnitFileState,ActiveState,SubState"))
        if rc != 0:
            return LoginItemStatus(True, self.path, None, None, _first_line(err or out))
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        active_state = props.get("ActiveState", "")
        return LoginItemStatus(True, self.path, props.get("UnitFileState") == "enabled",
                               active_state == "active",
                               f"{active_state} ({props.get('SubState', '?')})")

    def _status_darwin(self) -> LoginItemStatus:
        rc, out, err = self._runner(("launchctl", "print", self._service_target()))
        if rc == LAUNCHCTL_NO_SUCH_SERVICE:
            return LoginItemStatus(True, self.path, False, False, "installed but not loaded")
        if rc != 0:
            return LoginItemStatus(True, self.path, None, None, _first_line(err or out))
        match = re.search(r"^\s*state = (\S+)", out, re.MULTILINE)
        state = match.group(1) if match else "unknown"
        return LoginItemStatus(True, self.path, True, state == "running" if match else None,
                               f"loaded, {state}")

    def _status_win32(self) -> LoginItemStatus:
        rc, out, err = self._runner(("schtasks", "/Query", "/TN", TASK_NAME, "/FO", "CSV",
                                     "/NH"))
        if rc != 0:
            return LoginItemStatus(True, self.path, None, None, _first_line(err or out))
        rows = [row for row in csv.reader(out.splitlines()) if row]
        state = rows[-1][-1] if rows else ""
        # schtasks prints states in the system language: only the English ones are known.
        active = {"Running": True, "Ready": False, "Disabled": False, "Queued": False}.get(state)
        return LoginItemStatus(True, self.path, True, active, f"task {state or 'registered'}")

    def _gui_domain(self) -> str:
        uid = self._uid if self._uid is not None else os.getuid()
        return f"gui/{uid}"

    def _service_target(self) -> str:
        return f"{self._gui_domain()}/{LABEL}"

    def _windows_user(self) -> str:
        if self._user_id:
            return self._user_id
        user = os.environ.get("USERNAME", "")
        domain = os.environ.get("USERDOMAIN", "")
        if not user:
            raise InstallError("cannot tell the current Windows user (USERNAME is not set); "
                               "run `credsync install` from your own logon session")
        return f"{domain}\\{user}" if domain else user

    # ---- execution --------------------------------------------------------------------------

    def _execute(self, plan: Plan) -> None:
        for step in plan.steps:
            try:
                self._do(step, plan)
            except (OSError, StoreError) as exc:
                raise InstallError(f"{_describe_io(step)} failed: {exc}. "
                                   f"{self._retry(plan)}") from exc

    def _do(self, step: Step, plan: Plan) -> None:
        if isinstance(step, Run):
            rc, out, err = self._runner(step.argv)
            if rc != 0 and not step.may_fail:
                raise InstallError(
                    f"`{format_argv(step.argv, self._platform)}` failed (exit {rc}): "
                    f"{_first_line(err or out)}. {self._hint()} {self._retry(plan)}")
        elif isinstance(step, Write):
            step.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(step.path, step.data, mode=_FILE_MODE)
        elif isinstance(step, Remove):
            step.path.unlink(missing_ok=True)
        else:
            ensure_private_dir(step.path)

    def _hint(self) -> str:
        if self._platform == "linux":
            return ("Is a systemd user session running (try `systemctl --user status`)? "
                    "Without one, start `credsync run` from your desktop's autostart instead.")
        if self._platform == "darwin":
            return (f"Check `launchctl print {self._service_target()}`; if launchd is still "
                    "removing the previous agent, wait a few seconds.")
        return (f"Check `schtasks /Query /TN {TASK_NAME} /V /FO LIST` and that you may create "
                "tasks for your own account.")

    def _retry(self, plan: Plan) -> str:
        if plan.action == "install":
            return f"Then run `credsync install` again (the file is {plan.path})."
        return f"Then run `credsync uninstall` again, or remove {plan.path} by hand."


def _check_program(program: Sequence[str], platform: Platform) -> None:
    if not program:
        raise InstallError("no program to run; this is a bug in credsync")
    pure = PureWindowsPath if platform == "win32" else PurePosixPath
    if not pure(program[0]).is_absolute():
        raise InstallError(f"the program path {program[0]!r} is not absolute; a login item "
                           "starts without your shell's PATH: pass the full path")
    for arg in program:
        if _CONTROL.search(arg):
            raise InstallError(f"the argument {arg!r} holds a control character that a login "
                               "item cannot carry; use a path without it")


def _check_environment(environment: Mapping[str, str], platform: Platform) -> None:
    if environment and platform == "win32":
        # A scheduled task has no environment of its own; a wrapper (cmd /c set ...) would
        # open a console window at every logon. The config file can say the same thing.
        names = ", ".join(sorted(environment))
        raise InstallError(f"{names} is set in this shell but a scheduled task cannot carry "
                           "it; list the config dirs in the config file (claude.config_dirs) "
                           "and install again")
    for name, value in environment.items():
        if _CONTROL.search(value) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise InstallError(f"{name} holds a control character that a login item cannot "
                               "carry; set claude.config_dirs in the config file instead")


def _read(path: Path) -> bytes | None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return path.read_bytes()
    return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"


def _describe_io(step: Step) -> str:
    if isinstance(step, Write):
        return f"writing {step.path}"
    if isinstance(step, Remove):
        return f"removing {step.path}"
    if isinstance(step, MakeDir):
        return f"creating {step.path}"
    return f"running {step.argv[0]}"
