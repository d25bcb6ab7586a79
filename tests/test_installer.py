"""The login item: rendered files checked by real tools, plans, and install/uninstall end to end.

systemd cannot run here, so the Linux end-to-end tests put a recorder named ``systemctl`` first on
PATH; it logs its argv and whether the unit file existed at that moment, which proves the order
of writes, removals and commands.
"""

from __future__ import annotations

import configparser
import json
import os
import plistlib
import shutil
import stat
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

import agent
from agent.errors import InstallError
from agent.install.installer import (
    LABEL,
    TEMPLATE_NAMES,
    Installer,
    MakeDir,
    Platform,
    Remove,
    Run,
    Write,
    default_program,
    render_launchd_plist,
    render_systemd_unit,
    render_task_xml,
    subprocess_runner,
)

REPO = Path(agent.__file__).resolve().parents[1]
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
PYTHON = os.path.abspath(sys.executable)
PROGRAM = [PYTHON, "-m", "agent.cli", "run"]
TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
WIN_PROGRAM = [r"C:\Program Files\Python311\pythonw.exe", "-m", "agent.cli", "run"]


class FakeRunner:
    """Records every argv; answers from ``replies`` (default: success, no output)."""

    def __init__(self, replies: dict[tuple[str, ...], tuple[int, str, str]] | None = None,
                 watch: Path | None = None) -> None:
        self.replies = replies or {}
        self.watch = watch
        self.calls: list[tuple[str, ...]] = []
        self.file_present: list[bool] = []

    def __call__(self, argv: Sequence[str]) -> tuple[int, str, str]:
        self.calls.append(tuple(argv))
        if self.watch is not None:
            self.file_present.append(self.watch.exists())
        return self.replies.get(tuple(argv), (0, "", ""))


def make_installer(tmp_path: Path, platform: Platform, runner: FakeRunner | None = None,
                   program: Sequence[str] | None = None,
                   config: Path | None = None) -> Installer:
    if program is None:
        program = WIN_PROGRAM if platform == "win32" else PROGRAM
    return Installer(runner or FakeRunner(), tmp_path / "home", platform, program,
                     tmp_path / "logs", config, uid=501, user_id="HOST\\alice")


def systemd_verify(unit: Path, tmp_path: Path) -> tuple[int, str]:
    # A short runtime dir of its own: the user units systemd-analyze loads put sockets in it,
    # and a socket path has a 108-byte limit that a test's tmp_path (deeper under xdist) passes.
    with tempfile.TemporaryDirectory(prefix="rt-") as short:
        runtime = Path(short)
        os.chmod(runtime, 0o700)  # systemd-analyze --user refuses a runtime dir others can enter
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
               "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_COLORS": "0"}
        done = subprocess.run([SYSTEMD_ANALYZE, "--user", "verify", str(unit)], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, (done.stdout + done.stderr).strip()


def write_unit(tmp_path: Path, text: str) -> Path:
    unit = tmp_path / "unit" / "credsync.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(text)
    return unit


# ---- templates ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TEMPLATE_NAMES.values()))
def test_packaging_dir_holds_the_shipped_templates(name: str) -> None:
    shipped = REPO / "agent" / "install" / "templates" / name
    assert (REPO / "packaging" / name).read_bytes() == shipped.read_bytes()


@pytest.mark.integration
def test_templates_are_package_data(tmp_path: Path) -> None:
    """An installed package (not this source tree) must carry the templates."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "agent", src / "agent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", src)
    readme = REPO / "README.md"
    (src / "README.md").write_text(readme.read_text() if readme.exists() else "credsync\n")
    done = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
         "--build-lib", str(tmp_path / "out")],
        cwd=src, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    built = tmp_path / "out" / "agent" / "install" / "templates"
    missing = [n for n in TEMPLATE_NAMES.values() if not (built / n).is_file()]
    assert not missing, f"not shipped as package data: {missing} (see pyproject package-data)"


# ---- systemd --------------------------------------------------------------------------------

@pytest.mark.integration
def test_systemd_unit_passes_systemd_analyze_silently(tmp_path: Path) -> None:
    unit = write_unit(tmp_path, render_systemd_unit([*PROGRAM, "--config", "/etc/x.toml"]))
    rc, output = systemd_verify(unit, tmp_path)
    assert (rc, output) == (0, "")


@pytest.mark.integration
def test_systemd_verify_harness_sees_a_bad_key(tmp_path: Path) -> None:
    """Proves the silence above means something: a wrong key is reported."""
    text = render_systemd_unit(PROGRAM).replace("Restart=on-failure", "Restart=on-failure\nBogus=1")
    rc, output = systemd_verify(write_unit(tmp_path, text), tmp_path)
    assert rc == 0 and "Bogus" in output  # exit 0 on a bad key: only the output tells


@pytest.mark.integration
def test_systemd_exec_start_quotes_an_awkward_path(tmp_path: Path) -> None:
    odd_dir = tmp_path / "odd dir %n $HOME"
    odd_dir.mkdir()
    python = odd_dir / "py thon"
    python.symlink_to(PYTHON)
    program = [str(python), "-m", "agent.cli", "run", "--config", 'a b/"q" back\\slash $X %n']
    rc, output = systemd_verify(write_unit(tmp_path, render_systemd_unit(program)), tmp_path)
    # verify fails with "is not executable" unless the quoting leads back to the real file.
    assert (rc, output) == (0, "")


def test_systemd_refuses_what_it_cannot_execute() -> None:
    with pytest.raises(InstallError, match="quotes or backslashes"):
        render_systemd_unit(['/opt/it\'s/python', "-m", "agent.cli", "run"])


def test_systemd_unit_settings() -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(render_systemd_unit(PROGRAM))
    service = parser["Service"]
    assert service["ExecStart"] == " ".join(PROGRAM)
    assert Path(service["ExecStart"].split()[0]).is_absolute()
    assert service["Restart"] == "on-failure"
    assert int(service["RestartSec"]) > 0
    assert service["NoNewPrivileges"] == "yes"
    assert parser["Install"]["WantedBy"] == "default.target"


# ---- launchd --------------------------------------------------------------------------------

def test_plist_has_every_required_key_with_its_type(tmp_path: Path) -> None:
    program = ["/Applications/My & <Odd> App/python3", "-m", "agent.cli", "run"]
    data = plistlib.loads(render_launchd_plist(program, tmp_path / "logs").encode())
    expected_types = {"Label": str, "ProgramArguments": list, "RunAtLoad": bool,
                      "KeepAlive": dict, "ThrottleInterval": int, "ProcessType": str,
                      "StandardOutPath": str, "StandardErrorPath": str}
    for key, kind in expected_types.items():
        assert isinstance(data[key], kind), key
    assert data["Label"] == LABEL
    assert data["ProgramArguments"] == program
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert data["ThrottleInterval"] > 0
    assert data["ProcessType"] == "Background"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert Path(data[key]).parent == tmp_path / "logs"


# ---- Task Scheduler -------------------------------------------------------------------------

def test_task_xml_parses_and_names_the_command(tmp_path: Path) -> None:
    config = r"C:\Users\Alice Smith\credsync & co.toml"
    installer = make_installer(tmp_path, "win32", program=WIN_PROGRAM, config=Path(config))
    write = installer.plan_install().steps[0]
    assert isinstance(write, Write)
    assert write.data.startswith(b"\xff\xfe")  # UTF-16 with its byte-order mark
    root = ET.fromstring(write.data)
    exec_ = root.find("t:Actions/t:Exec", TASK_NS)
    assert exec_ is not None
    assert exec_.findtext("t:Command", namespaces=TASK_NS) == \
        '"C:\\Program Files\\Python311\\pythonw.exe"'
    assert exec_.findtext("t:Arguments", namespaces=TASK_NS) == \
        f'-m agent.cli run --config "{config}"'
    assert root.findtext("t:Triggers/t:LogonTrigger/t:UserId", namespaces=TASK_NS) == \
        "HOST\\alice"
    assert root.findtext("t:Principals/t:Principal/t:LogonType", namespaces=TASK_NS) == \
        "InteractiveToken"
    restart = root.find("t:Settings/t:RestartOnFailure", TASK_NS)
    assert restart is not None
    # The schema types Count as unsignedByte: Task Scheduler rejects anything above 255.
    assert 1 <= int(restart.findtext("t:Count", namespaces=TASK_NS) or 0) <= 255
    assert root.findtext("t:Settings/t:ExecutionTimeLimit", namespaces=TASK_NS) == "PT0S"


def test_task_xml_escapes_the_user(tmp_path: Path) -> None:
    root = ET.fromstring(render_task_xml(WIN_PROGRAM, "A&B\\<x>", "C:\\").encode("utf-16"))
    assert root.findtext("t:Principals/t:Principal/t:UserId", namespaces=TASK_NS) == "A&B\\<x>"


# ---- plans and execution (fake runner) ------------------------------------------------------

def test_linux_install_writes_then_reloads_and_enables(tmp_path: Path) -> None:
    runner = FakeRunner()
    installer = make_installer(tmp_path, "linux", runner)
    runner.watch = installer.path
    installer.install()
    assert installer.path == tmp_path / "home/.config/systemd/user/credsync.service"
    assert installer.path.read_text() == render_systemd_unit(PROGRAM)
    assert runner.calls == [("systemctl", "--user", "daemon-reload"),
                            ("systemctl", "--user", "enable", "--now", "credsync.service")]
    assert runner.file_present == [True, True]


def test_linux_install_again_is_idempotent_and_restarts_only_on_change(tmp_path: Path) -> None:
    runner = FakeRunner()
    make_installer(tmp_path, "linux", runner).install()
    same = make_installer(tmp_path, "linux", runner).install()
    assert same.commands == (("systemctl", "--user", "daemon-reload"),
                             ("systemctl", "--user", "enable", "--now", "credsync.service"))
    assert "up to date" in same.note
    changed = make_installer(tmp_path, "linux", runner, config=Path("/etc/c.toml")).install()
    assert changed.commands[-1] == ("systemctl", "--user", "restart", "credsync.service")
    assert "--config /etc/c.toml" in changed.path.read_text()


def test_linux_uninstall_disables_removes_then_reloads(tmp_path: Path) -> None:
    make_installer(tmp_path, "linux").install()
    runner = FakeRunner()
    installer = make_installer(tmp_path, "linux", runner)
    runner.watch = installer.path
    installer.uninstall()
    assert not installer.path.exists()
    assert runner.calls == [("systemctl", "--user", "disable", "--now", "credsync.service"),
                            ("systemctl", "--user", "daemon-reload")]
    assert runner.file_present == [True, False]


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_uninstall_when_absent_says_so_and_runs_nothing(tmp_path: Path,
                                                        platform: Platform) -> None:
    runner = FakeRunner()
    plan = make_installer(tmp_path, platform, runner).uninstall()
    assert "not installed" in plan.note
    assert plan.steps == ()
    assert runner.calls == []


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_dry_run_writes_nothing_and_runs_nothing(tmp_path: Path, platform: Platform) -> None:
    runner = FakeRunner()
    installer = make_installer(tmp_path, platform, runner)
    plan = installer.install(dry_run=True)
    assert plan.content and plan.commands
    assert not (tmp_path / "home").exists() and not (tmp_path / "logs").exists()
    installer.install()
    calls = len(runner.calls)
    assert make_installer(tmp_path, platform, runner).uninstall(dry_run=True).commands
    assert installer.path.exists()
    assert len(runner.calls) == calls


def test_darwin_install_and_uninstall(tmp_path: Path) -> None:
    not_loaded = (113, "", "Could not find service")
    runner = FakeRunner({("launchctl", "bootout", f"gui/501/{LABEL}"): not_loaded})
    installer = make_installer(tmp_path, "darwin", runner)
    plan = installer.install()
    plist = tmp_path / "home/Library/LaunchAgents/com.credsync.agent.plist"
    assert installer.path == plist and plist.is_file()
    assert isinstance(plan.steps[0], MakeDir)
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700
    assert runner.calls == [("launchctl", "bootout", f"gui/501/{LABEL}"),
                            ("launchctl", "bootstrap", "gui/501", str(plist))]
    installer.uninstall()
    assert not plist.exists()
    assert runner.calls[-1] == ("launchctl", "bootout", f"gui/501/{LABEL}")


def test_win32_install_and_uninstall(tmp_path: Path) -> None:
    runner = FakeRunner()
    installer = make_installer(tmp_path, "win32", runner)
    installer.install()
    xml = str(installer.path)
    assert runner.calls == [("schtasks", "/End", "/TN", "credsync"),
                            ("schtasks", "/Create", "/TN", "credsync", "/XML", xml, "/F"),
                            ("schtasks", "/Run", "/TN", "credsync")]
    plan = installer.uninstall()
    assert plan.commands == (("schtasks", "/End", "/TN", "credsync"),
                             ("schtasks", "/Delete", "/TN", "credsync", "/F"))
    assert isinstance(plan.steps[-1], Remove) and not installer.path.exists()


def test_a_failing_command_is_an_install_error_that_says_what_to_do(tmp_path: Path) -> None:
    enable = ("systemctl", "--user", "enable", "--now", "credsync.service")
    runner = FakeRunner({enable: (1, "", "Failed to connect to bus: No medium found\n")})
    with pytest.raises(InstallError) as caught:
        make_installer(tmp_path, "linux", runner).install()
    message = str(caught.value)
    assert "`systemctl --user enable --now credsync.service` failed (exit 1)" in message
    assert "Failed to connect to bus" in message
    assert "credsync install" in message and "systemctl --user status" in message


def test_program_must_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="not absolute"):
        make_installer(tmp_path, "linux", program=["python3", "-m", "agent.cli"]).plan_install()
    with pytest.raises(InstallError, match="not absolute"):
        make_installer(tmp_path, "win32", program=["/usr/bin/python"]).plan_install()


def test_control_characters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="control character"):
        make_installer(tmp_path, "linux", config=Path("/tmp/a\nExecStartPre=/bin/evil")) \
            .plan_install()


def test_default_program_is_this_interpreter_by_absolute_path() -> None:
    assert default_program(sys.executable, "linux") == PROGRAM
    assert default_program("relative/python", "linux")[0] == os.path.abspath("relative/python")


@pytest.mark.integration
def test_the_login_item_command_line_is_accepted_by_the_real_cli(tmp_path: Path) -> None:
    installer = Installer(FakeRunner(), tmp_path, "linux", default_program(sys.executable, "linux"),
                          tmp_path / "logs", tmp_path / "config.toml")
    done = subprocess.run([*installer.program, "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout


# ---- status ---------------------------------------------------------------------------------

def test_status_not_installed_asks_no_one(tmp_path: Path) -> None:
    runner = FakeRunner()
    status = make_installer(tmp_path, "linux", runner).status()
    assert (status.installed, status.enabled, status.active) == (False, False, None)
    assert runner.calls == []


def test_status_linux(tmp_path: Path) -> None:
    make_installer(tmp_path, "linux").install()
    show = ("systemctl", "--user", "show", "credsync.service",
            "--property=UnitFileState,ActiveState,SubState")
    out = "UnitFileState=enabled\nActiveState=active\nSubState=running\n"
    status = make_installer(tmp_path, "linux", FakeRunner({show: (0, out, "")})).status()
    assert (status.installed, status.enabled, status.active) == (True, True, True)
    nobus = FakeRunner({show: (1, "", "Failed to connect to bus")})
    unknown = make_installer(tmp_path, "linux", nobus).status()
    assert (unknown.installed, unknown.enabled, unknown.active) == (True, None, None)
    assert "Failed to connect" in unknown.detail


def test_status_darwin(tmp_path: Path) -> None:
    make_installer(tmp_path, "darwin").install()
    query = ("launchctl", "print", f"gui/501/{LABEL}")
    out = f"gui/501/{LABEL} = {{\n\tactive count = 1\n\tstate = running\n\tpid = 42\n}}\n"
    status = make_installer(tmp_path, "darwin", FakeRunner({query: (0, out, "")})).status()
    assert (status.enabled, status.active) == (True, True)
    gone = make_installer(tmp_path, "darwin", FakeRunner({query: (113, "", "")})).status()
    assert (gone.installed, gone.enabled, gone.active) == (True, False, False)


def test_status_win32(tmp_path: Path) -> None:
    make_installer(tmp_path, "win32").install()
    query = ("schtasks", "/Query", "/TN", "credsync", "/FO", "CSV", "/NH")
    out = '"\\credsync","N/A","Running"\r\n'
    status = make_installer(tmp_path, "win32", FakeRunner({query: (0, out, "")})).status()
    assert (status.enabled, status.active) == (True, True)
    ready = '"\\credsync","N/A","Ready"\r\n'
    idle = make_installer(tmp_path, "win32", FakeRunner({query: (0, ready, "")})).status()
    assert idle.active is False


def test_subprocess_runner_reports_a_missing_command() -> None:
    rc, _, err = subprocess_runner(["credsync-no-such-command-xyz"])
    assert rc == 127 and "not found" in err


def test_steps_are_the_documented_kinds(tmp_path: Path) -> None:
    steps = make_installer(tmp_path, "linux").plan_install().steps
    assert [type(s) for s in steps] == [Write, Run, Run]


# ---- end to end on Linux: a real process, systemctl replaced on PATH ------------------------

RECORDER = """#!/bin/sh
if [ -e "$CREDSYNC_TEST_UNIT" ]; then state=present; else state=absent; fi
printf '%s|%s\\n' "$*" "$state" >> "$CREDSYNC_TEST_RECORD"
if [ "$2" = show ]; then
    printf 'UnitFileState=enabled\\nActiveState=active\\nSubState=running\\n'
fi
if [ -n "$CREDSYNC_TEST_FAIL" ]; then
    echo "Failed to connect to bus: No medium found" >&2
    exit 1
fi
exit 0
"""


class World:
    """A fresh HOME, a config file, and a recording ``systemctl`` first on PATH."""

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.record = tmp_path / "systemctl.log"
        self.unit = self.home / ".config/systemd/user/credsync.service"
        self.config = tmp_path / "config.toml"
        self.config.write_text("[agent]\nlog_level = \"debug\"\n")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        recorder = bin_dir / "systemctl"
        recorder.write_text(RECORDER)
        recorder.chmod(0o755)
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("CREDSYNC_", "XDG_", "CLAUDE_"))}
        self.env = {**clean, "HOME": str(self.home), "PYTHONPATH": str(REPO),
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "CREDSYNC_TEST_UNIT": str(self.unit),
                    "CREDSYNC_TEST_RECORD": str(self.record)}
        self.cwd = tmp_path

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "agent.cli.install", *args],
                              env={**self.env, **env}, cwd=self.cwd, capture_output=True,
                              text=True, timeout=120, check=False)

    def calls(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []


@pytest.mark.integration
def test_cli_install_and_uninstall_with_systemctl_recorded(tmp_path: Path) -> None:
    world = World(tmp_path)
    done = world.cli("install", "--config", str(world.config))
    assert done.returncode == 0, done.stderr
    text = world.unit.read_text()
    assert f"ExecStart={PYTHON} -m agent.cli run --config {world.config}\n" in text
    assert world.calls() == ["--user daemon-reload|present",
                             "--user enable --now credsync.service|present"]
    assert systemd_verify(world.unit, tmp_path) == (0, "")
    assert "systemctl --user status credsync.service" in done.stdout

    again = world.cli("install", "--config", str(world.config))
    assert again.returncode == 0, again.stderr
    assert world.unit.read_text() == text
    assert world.calls()[2:] == ["--user daemon-reload|present",
                                 "--user enable --now credsync.service|present"]

    gone = world.cli("uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not world.unit.exists()
    assert world.calls()[4:] == ["--user disable --now credsync.service|present",
                                 "--user daemon-reload|absent"]

    twice = world.cli("uninstall")
    assert twice.returncode == 0, twice.stderr
    assert "not installed" in twice.stdout
    assert len(world.calls()) == 6


@pytest.mark.integration
def test_cli_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    world = World(tmp_path)
    done = world.cli("install", "--dry-run", "--config", str(world.config))
    assert done.returncode == 0, done.stderr
    assert not world.unit.exists() and world.calls() == []
    assert not (world.home / ".local").exists()  # nor the log dir
    lines = done.stdout.splitlines()
    assert "  1. write " + str(world.unit) in lines
    assert "  2. run: systemctl --user daemon-reload" in lines
    assert "  3. run: systemctl --user enable --now credsync.service" in lines
    assert f"ExecStart={PYTHON} -m agent.cli run --config {world.config}" in lines


@pytest.mark.integration
def test_cli_reports_a_failing_systemctl_without_a_traceback(tmp_path: Path) -> None:
    world = World(tmp_path)
    done = world.cli("install", "--config", str(world.config), CREDSYNC_TEST_FAIL="1")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "Failed to connect to bus" in done.stderr
    assert "systemctl --user status" in done.stderr


@pytest.mark.integration
def test_cli_refuses_a_broken_config_before_touching_anything(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.config.write_text("[agent]\nlog_levle = 1\n")
    done = world.cli("install", "--config", str(world.config))
    assert done.returncode == 2
    assert "log_levle" in done.stderr and "Traceback" not in done.stderr
    assert not world.unit.exists() and world.calls() == []


@pytest.mark.integration
def test_login_item_status_in_a_real_process(tmp_path: Path) -> None:
    world = World(tmp_path)
    script = ("import json; from agent.cli.install import login_item_status; "
              "print(json.dumps(login_item_status()))")

    def status() -> dict[str, object]:
        done = subprocess.run([PYTHON, "-c", script], env=world.env, cwd=world.cwd,
                              capture_output=True, text=True, timeout=120, check=True)
        result: dict[str, object] = json.loads(done.stdout)
        return result

    before = status()
    assert (before["installed"], before["path"]) == (False, str(world.unit))
    assert str(before["log_file"]).startswith(str(world.home))
    assert world.cli("install").returncode == 0
    after = status()
    assert (after["installed"], after["enabled"], after["active"]) == (True, True, True)


# ---- F2: the login item carries what chose the config dirs; F12: stop timeouts ---------------

CARRIED = {"CLAUDE_CONFIG_DIR": "/home/u/my work/100% \"x\"\\y",
           "CLAUDE_SECURESTORAGE_CONFIG_DIR": ""}


def test_systemd_unit_carries_the_config_dir_variables(tmp_path: Path) -> None:
    text = render_systemd_unit(PROGRAM, CARRIED)
    assert 'Environment="CLAUDE_CONFIG_DIR=/home/u/my work/100%% \\"x\\"\\\\y"\n' in text
    assert 'Environment="CLAUDE_SECURESTORAGE_CONFIG_DIR="\n' in text
    assert systemd_verify(write_unit(tmp_path, text), tmp_path) == (0, "")


def test_systemd_stop_timeout_exceeds_the_refresh_timeout() -> None:
    from agent.config import RefreshSection

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(render_systemd_unit(PROGRAM))
    # A stop during a refresh waits for the answer (timeout_s) and the save that follows.
    assert int(parser["Service"]["TimeoutStopSec"]) >= RefreshSection().timeout_s + 20


def test_plist_carries_the_config_dir_variables_and_a_long_exit_timeout(tmp_path: Path) -> None:
    from agent.config import RefreshSection

    data = plistlib.loads(render_launchd_plist(PROGRAM, tmp_path, CARRIED).encode())
    assert data["EnvironmentVariables"] == {"PYTHONUNBUFFERED": "1", **CARRIED}
    assert data["ExitTimeOut"] >= RefreshSection().timeout_s + 20


def test_a_scheduled_task_cannot_carry_the_variables_and_says_what_to_do(tmp_path: Path) -> None:
    installer = Installer(FakeRunner(), tmp_path, "win32", WIN_PROGRAM, tmp_path,
                          user_id="H\\a", environment={"CLAUDE_CONFIG_DIR": "C:\\w"})
    with pytest.raises(InstallError, match=r"CLAUDE_CONFIG_DIR .*\(claude\.config_dirs\)"):
        installer.plan_install()


@pytest.mark.integration
def test_cli_install_carries_claude_config_dir_and_says_what_it_watches(tmp_path: Path) -> None:
    world = World(tmp_path)
    work = world.home / "work"
    done = world.cli("install", "--config", str(world.config), CLAUDE_CONFIG_DIR="~/work")
    assert done.returncode == 0, done.stderr
    assert f'Environment="CLAUDE_CONFIG_DIR={work}"\n' in world.unit.read_text()
    assert systemd_verify(world.unit, tmp_path) == (0, "")
    assert f"The agent will watch: {work} (CLAUDE_CONFIG_DIR, carried into the login item)" \
        in done.stdout.splitlines()
    plain = world.cli("install", "--dry-run", "--config", str(world.config))
    assert "Environment=\"CLAUDE" not in plain.stdout
    assert f"The agent will watch: {world.home / '.claude'} (the default)" in plain.stdout


@pytest.mark.integration
def test_cli_install_carries_nothing_when_the_config_lists_the_dirs(tmp_path: Path) -> None:
    world = World(tmp_path)
    listed = world.home / "listed"
    world.config.write_text(f'[claude]\nconfig_dirs = ["{listed}"]\n')
    done = world.cli("install", "--dry-run", "--config", str(world.config),
                     CLAUDE_CONFIG_DIR=str(world.home / "work"))
    assert done.returncode == 0, done.stderr
    assert "CLAUDE_CONFIG_DIR" not in done.stdout
    assert f"The agent will watch: {listed} (claude.config_dirs)" in done.stdout
