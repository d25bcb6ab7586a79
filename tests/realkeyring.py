"""A real Secret Service keychain for tests: gnome-keyring on a private D-Bus session bus.

``private_keyring()`` starts ``dbus-daemon`` with a config that activates nothing (so a missing
service stays missing) and, unless told not to, ``gnome-keyring-daemon`` in fresh 0700 HOME /
XDG dirs, unlocked with a password on stdin. keyring and secretstorage read
``DBUS_SESSION_BUS_ADDRESS`` from ``os.environ`` whenever they connect, so the context manager sets
it for its duration and restores it afterwards; subprocesses (``secret-tool``, ``credsync run``)
get ``RealKeyring.env``. Everything started is stopped on exit.

Use the fixtures by importing them into a test module::

    from tests.realkeyring import real_keyring_fixture  # noqa: F401   (fixture "real_keyring")
    from tests.realkeyring import real_keyring  # noqa: F401           (the same, shorter)
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from agent.sim.bus import BUS_CONFIG, name_has_owner, stop_process

SECRETS = "org.freedesktop.secrets"
LOGIN_COLLECTION = "/org/freedesktop/secrets/collection/login"
START_DEADLINE_S = 10.0
TOOLS = ("dbus-daemon", "dbus-send", "gnome-keyring-daemon", "secret-tool")
# Variables that would point a child at the user's real session or display.
SCRUBBED = ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY", "GNOME_KEYRING_CONTROL",
            "SSH_AUTH_SOCK")



def require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        # Never a skip: CI installs these (dbus-daemon dbus-bin gnome-keyring libsecret-tools).
        raise RuntimeError(f"missing {', '.join(missing)}: apt-get install dbus-daemon dbus-bin "
                           "gnome-keyring libsecret-tools")


@contextlib.contextmanager
def environ_overlay(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) variables in os.environ; restore them on exit."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RealKeyring:
    """A private bus, optionally with gnome-keyring on it. ``env`` is for subprocesses."""

    def __init__(self, root: Path, password: str = "credsync-test") -> None:
        self.root = root
        self.password = password
        self.bus: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.address = ""
        home, data, runtime = root / "home", root / "data", root / "run"
        for path in (home, data, runtime):
            path.mkdir(mode=0o700)
        base = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        self.env: dict[str, str] = {**base, "HOME": str(home), "XDG_DATA_HOME": str(data),
                                    "XDG_RUNTIME_DIR": str(runtime),
                                    "XDG_CONFIG_HOME": str(home / ".config"),
                                    "XDG_CACHE_HOME": str(home / ".cache")}

    # --- the bus ---

    def start_bus(self) -> None:
        config = self.root / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket=self.root / "run" / "bus"))
        with open(self.root / "bus.log", "wb") as log:
            self.bus = subprocess.Popen(
                ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=self.env)
        self.address = self._read_address(self.bus)
        self.env["DBUS_SESSION_BUS_ADDRESS"] = self.address

    def _read_address(self, bus: subprocess.Popen[bytes]) -> str:
        assert bus.stdout is not None
        ready, _, _ = select.select([bus.stdout], [], [], START_DEADLINE_S)
        line = bus.stdout.readline().decode().strip() if ready else ""
        if not line:
            raise RuntimeError(f"dbus-daemon gave no address: {self._log('bus.log')}")
        return line

    def _log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-500:] if path.exists() else ""

    def has_owner(self, name: str = SECRETS) -> bool:
        return name_has_owner(self.env, name, check=True)

    def _wait_owner(self, present: bool) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while self.has_owner() is not present:
            if self.daemon is not None and present and self.daemon.poll() is not None:
                raise RuntimeError(f"gnome-keyring-daemon exited: {self._log('keyring.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{SECRETS} {'never came' if present else 'never left'}")
            time.sleep(0.01)  # polling a condition with a deadline

    # --- the keyring daemon ---

    def start_daemon(self) -> None:
        """Start gnome-keyring (again); with the same HOME it unlocks the same login keyring."""
        with open(self.root / "keyring.log", "ab") as log:
            self.daemon = subprocess.Popen(
                ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, env=self.env)
        assert self.daemon.stdin is not None
        self.daemon.stdin.write(self.password.encode())
        self.daemon.stdin.close()
        self._wait_owner(True)

    def stop_daemon(self) -> None:
        """The keychain goes away (as when the daemon crashes or the session ends)."""
        stop_process(self.daemon)
        self.daemon = None
        self._wait_owner(False)

    def lock(self) -> None:
        """Lock the login collection; with no prompter on this bus it cannot be unlocked."""
        subprocess.run(
            ["dbus-send", "--session", f"--dest={SECRETS}", "--print-reply",
             "/org/freedesktop/secrets", "org.freedesktop.Secret.Service.Lock",
             f"array:objpath:{LOGIN_COLLECTION}"],
            env=self.env, capture_output=True, timeout=5, check=True)

    # --- an independent look at what is stored ---

    def lookup(self, service: str, username: str) -> str | None:
        """What ``secret-tool`` finds for keyring's attributes (service, username)."""
        out = subprocess.run(["secret-tool", "lookup", "service", service, "username", username],
                             env=self.env, capture_output=True, timeout=10)
        return out.stdout.decode() if out.returncode == 0 else None

    def store(self, service: str, username: str, secret: str) -> None:
        """Store an item with ``secret-tool``, as another program would."""
        subprocess.run(["secret-tool", "store", "--label=test", "service", service,
                        "username", username], input=secret.encode(), env=self.env,
                       capture_output=True, timeout=10, check=True)

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in (self.bus, self.daemon) if p is not None]

    def close(self) -> None:
        stop_process(self.daemon)
        stop_process(self.bus)
        for proc in (self.daemon, self.bus):
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()


@contextlib.contextmanager
def private_keyring(daemon: bool = True) -> Iterator[RealKeyring]:
    """A private bus (with gnome-keyring unless ``daemon`` is False), wired into os.environ."""
    require_tools()
    # A short path: a unix socket path must stay under ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="credsync-kr-"))
    keyring = RealKeyring(root)
    try:
        keyring.start_bus()
        if daemon:
            keyring.start_daemon()
        with environ_overlay({"DBUS_SESSION_BUS_ADDRESS": keyring.address}):
            yield keyring
    finally:
        keyring.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(name="real_keyring")
def real_keyring_fixture() -> Iterator[RealKeyring]:
    """gnome-keyring on a private bus; ``.env`` for subprocesses, os.environ set meanwhile."""
    with private_keyring(daemon=True) as keyring:
        yield keyring


@pytest.fixture(name="no_keyring_bus")
def no_keyring_bus_fixture() -> Iterator[RealKeyring]:
    """A private bus with no Secret Service on it and none activatable."""
    with private_keyring(daemon=False) as keyring:
        yield keyring


# Either spelling registers the fixture when imported into a test module; the ``_fixture`` names
# keep ruff from seeing a test's ``real_keyring`` parameter as a redefinition of the import.
real_keyring = real_keyring_fixture
no_keyring_bus = no_keyring_bus_fixture
