"""A real desktop notification stack for tests: Xvfb, a private D-Bus session bus, dunst.

``real_desktop`` starts, in this order (services inherit the bus's environment, so the display
comes first): ``Xvfb`` on a free display, ``dbus-daemon`` with a config that activates nothing,
and ``dunst`` with a catch-all rule whose script appends every notification it shows (app name,
summary, body, urgency: the only place dunst exposes urgency) to a JSON-lines file. It waits for
``org.freedesktop.Notifications`` to be owned, points ``os.environ`` at the bus and the display
(desktop-notifier and dbus-fast read it there) and restores it afterwards.

``bus_without_server`` is the headless case: a private bus with nothing on it and no activation.

Use the fixtures by importing them into a test module::

    from tests.realdesktop import bus_without_server_fixture, real_desktop_fixture  # noqa: F401

(the fixtures are named ``real_desktop`` and ``bus_without_server``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sim.bus import BUS_CONFIG, name_has_owner, stop_process
from tests.realkeyring import environ_overlay

NOTIFICATIONS = "org.freedesktop.Notifications"
START_DEADLINE_S = 10.0
TOOLS = ("Xvfb", "dbus-daemon", "dbus-send", "dunst", "dunstctl", "import", "identify")
# Variables that would point a child at the user's real session or display.
SCRUBBED = ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY")


# Notifications stay up (timeout 0) so that a screenshot taken later still shows them.
DUNSTRC = """[global]
    monitor = 0
    follow = none
    width = 720
    height = 300
    origin = top-center
    offset = 0x40
    font = DejaVu Sans 11
    markup = full
    format = "<b>%a</b>  %s\\n%b"
    frame_width = 3
    padding = 12
    horizontal_padding = 12
    always_run_script = true
    show_indicators = no

[urgency_low]
    background = "#303030"
    foreground = "#ffffff"
    timeout = 0

[urgency_normal]
    background = "#285577"
    foreground = "#ffffff"
    frame_color = "#4c7899"
    timeout = 0

[urgency_critical]
    background = "#900000"
    foreground = "#ffffff"
    frame_color = "#ff3030"
    timeout = 0

[log_all]
    summary = "*"
    script = {script}
"""

# One write per record with O_APPEND: dunst runs scripts concurrently.
LOG_SCRIPT = """#!{python} -S
import json, os
keys = ("DUNST_APP_NAME", "DUNST_SUMMARY", "DUNST_BODY", "DUNST_URGENCY")
line = json.dumps({{k: os.environ.get(k, "") for k in keys}}) + "\\n"
fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, line.encode())
os.close(fd)
"""


def require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        # Never a skip: CI installs these (xvfb dbus-daemon dbus-bin dunst imagemagick).
        raise RuntimeError(f"missing {', '.join(missing)}: apt-get install xvfb dbus-daemon "
                           "dbus-bin dunst imagemagick")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)
    if proc.stdout is not None:
        proc.stdout.close()


def read_line(fd: int, what: str, deadline_s: float = START_DEADLINE_S) -> str:
    """One line a starting process writes to ``fd``, within a deadline."""
    data = b""
    deadline = time.monotonic() + deadline_s
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        chunk = os.read(fd, 256) if ready else b""
        if not chunk:
            raise RuntimeError(f"{what} did not report in time (got {data!r})")
        data += chunk
    return data.decode().strip()


class Session:
    """Processes of one private session; ``env`` is for subprocesses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        home = root / "home"
        home.mkdir(mode=0o700)
        (root / "run").mkdir(mode=0o700)
        base = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        self.env: dict[str, str] = {**base, "HOME": str(home), "XDG_RUNTIME_DIR": str(root / "run"),
                                    "XDG_CONFIG_HOME": str(home / ".config")}

    def log_tail(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-800:] if path.exists() else ""

    def spawn(self, name: str, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as log:
            proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
                argv, env=self.env, stdin=subprocess.DEVNULL, stderr=log, **kwargs)
        self.procs.append(proc)
        return proc

    def start_xvfb(self) -> None:
        read_end, write_end = os.pipe()
        try:
            # -br: a plain black root, so anything drawn shows up as a second colour.
            self.spawn("xvfb", ["Xvfb", "-displayfd", str(write_end), "-screen", "0",
                                "1024x600x24", "-nolisten", "tcp", "-br"],
                       stdout=subprocess.DEVNULL, pass_fds=(write_end,))
            os.close(write_end)
            write_end = -1
            display = read_line(read_end, f"Xvfb ({self.log_tail('xvfb')})")
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        self.env["DISPLAY"] = f":{display}"

    def start_bus(self) -> None:
        config = self.root / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket=self.root / "run" / "bus"))
        bus = self.spawn("bus", ["dbus-daemon", f"--config-file={config}", "--nofork",
                                 "--print-address=1"], stdout=subprocess.PIPE)
        assert bus.stdout is not None
        self.env["DBUS_SESSION_BUS_ADDRESS"] = read_line(
            bus.stdout.fileno(), f"dbus-daemon ({self.log_tail('bus')})")

    def has_owner(self, name: str = NOTIFICATIONS) -> bool:
        return name_has_owner(self.env, name, check=True)

    def close(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)


class RealDesktop(Session):
    """Xvfb + private bus + dunst, with a record of every notification dunst showed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.log_path = root / "notifications.jsonl"

    def start_dunst(self) -> None:
        script = self.root / "log.py"
        script.write_text(LOG_SCRIPT.format(python=sys.executable, log=str(self.log_path)))
        script.chmod(0o700)
        dunstrc = self.root / "dunstrc"
        dunstrc.write_text(DUNSTRC.format(script=script))
        dunst = self.spawn("dunst", ["dunst", "-config", str(dunstrc)],
                           stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_DEADLINE_S
        while not self.has_owner():
            if dunst.poll() is not None:
                raise RuntimeError(f"dunst exited: {self.log_tail('dunst')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dunst never took {NOTIFICATIONS}: {self.log_tail('dunst')}")
            time.sleep(0.01)  # polling a condition with a deadline

    def records(self) -> list[dict[str, str]]:
        """Every notification the rule script saw so far (complete lines only)."""
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines(keepends=True)
                if line.endswith("\n")]

    def wait_for(self, summary: str, deadline_s: float = 10.0) -> dict[str, str]:
        """The record of the notification with this summary, once dunst has shown it."""
        deadline = time.monotonic() + deadline_s
        while True:
            found = [r for r in self.records() if r.get("DUNST_SUMMARY") == summary]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"dunst never showed {summary!r}; saw {self.records()}")
            time.sleep(0.01)  # polling a condition with a deadline

    def displayed(self) -> int:
        out = subprocess.run(["dunstctl", "count", "displayed"], env=self.env,
                             capture_output=True, timeout=5, check=True)
        return int(out.stdout.decode().strip() or 0)

    def screenshot(self, path: Path, deadline_s: float = 10.0) -> Path:
        """Capture the screen once something is drawn on it (more than the black root)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + deadline_s
        while True:
            subprocess.run(["import", "-window", "root", str(path)], env=self.env,
                           capture_output=True, timeout=15, check=True)
            if self.displayed() > 0 and self._colours(path) > 1:
                return path
            if time.monotonic() > deadline:
                raise AssertionError("the screen stayed empty: no notification drawn")
            time.sleep(0.05)  # polling a condition with a deadline

    def _colours(self, path: Path) -> int:
        out = subprocess.run(["identify", "-format", "%k", str(path)], env=self.env,
                             capture_output=True, timeout=15, check=True)
        return int(out.stdout.decode().strip() or 0)


@contextlib.contextmanager
def _session(kind: type[Session], prefix: str) -> Iterator[Session]:
    require_tools()
    # A short path: a unix socket path must stay under ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    session = kind(root)
    try:
        yield session
    finally:
        session.close()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def real_desktop_session() -> Iterator[RealDesktop]:
    with _session(RealDesktop, "credsync-dt-") as session:
        assert isinstance(session, RealDesktop)
        session.start_xvfb()
        session.start_bus()
        session.start_dunst()
        with environ_overlay({"DBUS_SESSION_BUS_ADDRESS": session.env["DBUS_SESSION_BUS_ADDRESS"],
                              "DISPLAY": session.env["DISPLAY"]}):
            yield session


@contextlib.contextmanager
def bare_bus_session() -> Iterator[Session]:
    with _session(Session, "credsync-bus-") as session:
        session.start_bus()
        with environ_overlay({"DBUS_SESSION_BUS_ADDRESS": session.env["DBUS_SESSION_BUS_ADDRESS"],
                              "DISPLAY": None}):
            yield session


@pytest.fixture(name="real_desktop")
def real_desktop_fixture() -> Iterator[RealDesktop]:
    """dunst on Xvfb on a private bus; os.environ points at them meanwhile."""
    with real_desktop_session() as desktop:
        yield desktop


@pytest.fixture(name="bus_without_server")
def bus_without_server_fixture() -> Iterator[Session]:
    """A private session bus with no notification server and no activation."""
    with bare_bus_session() as session:
        yield session
