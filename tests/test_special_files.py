"""Special files where credsync expects plain ones (F7, F11): a directory, a FIFO, a device, a
symlink loop, an unreadable file. Every real ``credsync`` command ends, within a bounded time,
in its answer or in one line naming the file and the fix: never a traceback, never a hang.

Mode 000 cannot be seen as root, so those cases run the command as ``nobody`` (setpriv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.errors import StoreError
from agent.fsutil import open_regular
from agent.ledger import Ledger
from agent.locks.filelock import FileLock
from agent.sim.server import OAuthServer
from tests.agentproc import REPO, AgentProcess, credsync, write_config
from tests.factories import write_doc

pytestmark = pytest.mark.integration

COMMANDS = ("token", "status", "refresh")
# Bounded: a command blocked opening a FIFO would otherwise hang the test run.
TIMEOUT_S = 20


@pytest.fixture(scope="module")
def server() -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=8 * 3600) as srv:
        yield srv


class World:
    """One login in one config dir, a private state dir and a log file, keychain off."""

    def __init__(self, root: Path, server: OAuthServer) -> None:
        self.claude = root / "claude"
        self.state = root / "state"
        self.log = self.state / "log" / "credsync.log"
        write_doc(self.claude, {"claudeAiOauth": server.issue_login()})
        self.config = write_config(root / "config.toml", [self.claude], self.state,
                                   keychain=False, log_file=self.log,
                                   refresh={"token_url": server.url, "jitter": 0})
        self.cred_file = self.claude / ".credentials.json"
        self.state.mkdir(mode=0o700)
        self.log.parent.mkdir(mode=0o700)


def replace_with(path: Path, kind: str) -> None:
    if path.is_file():
        path.unlink()
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    else:  # pragma: no cover - a typo in a parameter
        raise AssertionError(kind)


def assert_one_line(out: subprocess.CompletedProcess[str], names: Path | None = None) -> None:
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "Error:" not in text.replace("credsync: ", ""), text
    assert len(out.stderr.splitlines()) <= 1, out.stderr
    if names is not None and out.stderr:
        assert str(names) in out.stderr, out.stderr


def run(world: World, command: str) -> subprocess.CompletedProcess[str]:
    return credsync([command, "--config", str(world.config)], timeout=TIMEOUT_S)


@pytest.mark.parametrize("kind", ["directory", "fifo", "dev-zero", "symlink-loop"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_special_credential_file_gives_one_line(tmp_path: Path, server: OAuthServer,
                                                  kind: str, command: str) -> None:
    world = World(tmp_path, server)
    replace_with(world.cred_file, kind)
    out = run(world, command)
    assert_one_line(out, world.cred_file)
    assert out.returncode in ((0,) if command == "status" else (1, 3)), out.stderr


# Shared by every login (the ledger's root) or kept per login (its scope dir).
ROOT_FILES = ["journal", "refresh.lock", "log/credsync.log"]
STATE_FILES = ["agent.json", "login.json", "memory.json", "last-good.json", "agent.lock",
               "alerts.json", *ROOT_FILES]


def state_cases() -> list[object]:
    return list(_state_cases())


def _state_cases() -> Iterator[object]:
    for name in STATE_FILES:
        for kind in ("directory", "fifo"):
            for command in COMMANDS:
                yield pytest.param(name, kind, command, id=f"{name}-{kind}-{command}")


@pytest.mark.parametrize(("name", "kind", "command"), state_cases())
def test_a_special_state_file_never_hangs_or_tracebacks(
        tmp_path: Path, server: OAuthServer, name: str, kind: str, command: str) -> None:
    world = World(tmp_path, server)
    where = world.state if name in ROOT_FILES else Ledger(world.state, [world.claude]).path
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_with(where / name, kind)
    out = run(world, command)
    assert_one_line(out, where / name)


def started_and_stopped(world: World) -> AgentProcess:
    """``credsync run`` gets through its first round and stops on SIGTERM within 3 s."""
    agent = AgentProcess(world.config)
    try:
        agent.wait_started(world.state)
    except BaseException:
        agent.kill()
        raise
    assert agent.stop() < 3
    return agent


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_the_agent_runs_and_stops_with_a_special_log_file(tmp_path: Path, server: OAuthServer,
                                                          kind: str) -> None:
    world = World(tmp_path, server)
    replace_with(world.log, kind)
    agent = started_and_stopped(world)
    assert "Traceback" not in agent.output()
    assert f"cannot use {world.log}: not a regular file" in agent.output()


@pytest.mark.parametrize("name", ["agent.lock", "refresh.lock"])
def test_run_with_a_fifo_lock_file_ends_in_one_line(tmp_path: Path, server: OAuthServer,
                                                    name: str) -> None:
    world = World(tmp_path, server)
    where = world.state if name in ROOT_FILES else Ledger(world.state, [world.claude]).path
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_with(where / name, "fifo")
    if name == "agent.lock":
        out = credsync(["run", "--config", str(world.config)], timeout=TIMEOUT_S)
        assert out.returncode == 1
        assert_one_line(out, where / name)
        return
    # refresh.lock is taken only when a refresh is due: the agent must still run and stop.
    started_and_stopped(world)


# --- mode 000, as an unprivileged user ------------------------------------------------------

SETPRIV = shutil.which("setpriv")
NOBODY = 65534
as_nobody = pytest.mark.skipif(SETPRIV is None or os.geteuid() != 0,
                               reason="needs root and setpriv to run a command as nobody")


@pytest.fixture
def nobody_root() -> Iterator[Path]:
    # Outside pytest's tmp_path: its parents are 0700 root's, which nobody cannot traverse.
    root = Path(tempfile.mkdtemp(prefix="credsync-nobody-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def chown_tree(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(name, NOBODY, NOBODY, follow_symlinks=False)


def as_nobody_run(world: World, root: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(root), "XDG_CACHE_HOME": str(root / "cache")}
    argv = [str(SETPRIV), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            sys.executable, "-m", "agent.cli", command, "--config", str(world.config)]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


UNREADABLE: dict[str, tuple[Callable[[World], Path], dict[str, int]]] = {
    # an unreadable store is not a lost login: refresh fails (1) and says so, no re-login (3)
    "credential file": (lambda w: w.cred_file, {"token": 1, "status": 0, "refresh": 1}),
    "config dir": (lambda w: w.claude, {"token": 1, "status": 0, "refresh": 1}),
    "config file": (lambda w: w.config, {"token": 2, "status": 2, "refresh": 2}),
    "config file's dir": (lambda w: w.config.parent, {"token": 2, "status": 2,
                                                               "refresh": 2}),
}


@as_nobody
@pytest.mark.parametrize("what", list(UNREADABLE))
@pytest.mark.parametrize("command", COMMANDS)
def test_mode_000_gives_one_line_and_the_right_exit(nobody_root: Path, server: OAuthServer,
                                                    what: str, command: str) -> None:
    world = World(nobody_root, server)
    if what == "config file's dir":
        sub = nobody_root / "sub"
        sub.mkdir()
        world.config = world.config.rename(sub / "config.toml")
    target, codes = UNREADABLE[what]
    chown_tree(nobody_root)
    target(world).chmod(0)
    out = as_nobody_run(world, nobody_root, command)
    assert_one_line(out)
    assert out.returncode == codes[command], out.stdout + out.stderr
    if out.stderr:
        assert "ermission denied" in out.stderr, out.stderr


# --- the helpers themselves ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["directory", "fifo", "dev-zero", "symlink-loop"])
@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                   os.O_RDWR | os.O_CREAT])
def test_open_regular_refuses_at_once(tmp_path: Path, kind: str, flags: int) -> None:
    # A read-only open of a FIFO with no writer blocks forever without O_NONBLOCK; the test
    # would hang (pytest-timeout) rather than fail if it did.
    path = tmp_path / "f"
    replace_with(path, kind)
    for follow in (True, False):
        with pytest.raises(StoreError, match=f"cannot use {path}: .*; (move|remove)"):
            os.close(open_regular(path, flags, follow=follow))


def test_open_regular_refuses_a_symlink_unless_told_to_follow(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    link = tmp_path / "link"
    link.symlink_to("real")
    with pytest.raises(StoreError, match="it is a symlink, which credsync does not follow"):
        open_regular(link, os.O_RDONLY)
    fd = open_regular(link, os.O_RDONLY, follow=True)
    try:
        assert os.read(fd, 1) == b"x" and os.get_blocking(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["directory", "fifo", "dev-zero"])
def test_a_lock_file_that_is_not_a_file_is_a_store_error_not_busy(tmp_path: Path,
                                                                  kind: str) -> None:
    replace_with(tmp_path / "refresh.lock", kind)
    with pytest.raises(StoreError, match=r"refresh\.lock"):
        FileLock(tmp_path / "refresh.lock").acquire(5)


def test_run_with_a_directory_as_its_pid_file_ends_in_one_line_with_the_fix(
        tmp_path: Path, server: OAuthServer) -> None:
    world = World(tmp_path, server)
    scope = Ledger(world.state, [world.claude]).path
    scope.mkdir(mode=0o700, parents=True, exist_ok=True)
    (scope / "agent.pid").mkdir()
    out = credsync(["run", "--config", str(world.config)], timeout=TIMEOUT_S)
    assert out.returncode == 1
    assert_one_line(out, scope / "agent.pid")
    assert "move it away" in out.stderr
