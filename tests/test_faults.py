"""Faults around credsync: other processes, the machine, the clock and the network.

Real processes, files, mounts and servers wherever they can run here (``credsync run``, the
simulated OAuth server over HTTP, gnome-keyring on a private bus, a full tmpfs, a process that
lacks root's permission override); the clock faults drive the in-process agent with a FakeClock,
against the same real HTTP server, so that hours pass in milliseconds. Each test is one row of the
fault table in the README: what was done, what credsync did, what the user saw.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import RefreshSection
from agent.credential import Credential, fingerprint_of, parse_document
from agent.errors import LockError
from agent.ledger import Ledger
from agent.locks.mkdirlock import STORAGE_WRITE_STALE_S, MkdirLock
from agent.loop.agent import Agent
from agent.loop.watcher import FileChanged
from agent.reconcile import Reconciler
from agent.refresh.coordinator import Coordinator, RefreshDriver
from agent.refresh.http import Backoff, HttpRefresher
from agent.sim.server import OAuthServer
from agent.sim.session import SimSession
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.sink import SinkStore
from tests.agentproc import REPO, AgentProcess, credsync, wait_for, write_config
from tests.factories import make_cred, write_cred
from tests.realkeyring import RealKeyring, real_keyring  # noqa: F401

pytestmark = pytest.mark.integration
BASE_MS = (int(time.time()) + 6 * 3600) * 1000  # a real login: expires within a day


# ===== a real agent process over real files ===============================================
class PrefixedAgent(AgentProcess):
    """``credsync run`` started through a wrapper command (``setpriv ...``)."""

    def __init__(self, config: Path, prefix: Sequence[str], env: dict[str, str] | None = None):
        self.config = config
        self.log = config.with_suffix(".stderr")
        self._log_fh = open(self.log, "w")  # noqa: SIM115 - closed by stop()/kill()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            cwd=REPO, env=env or dict(os.environ), stdout=self._log_fh,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@dataclass
class Scene:
    root: Path
    dirs: list[Path]
    sinks: list[SinkStore]
    state: Path
    config: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    agent: AgentProcess | None = None

    def start(self, prefix: Sequence[str] = ()) -> AgentProcess:
        self.agent = (PrefixedAgent(self.config, prefix, self.env) if prefix
                      else AgentProcess(self.config, self.env))
        self.agent.wait_started(self.state)
        return self.agent

    def cred(self, d: Path) -> Credential | None:
        return ClaudeFileStore(d).read().valid

    def sink_holds(self, sink: SinkStore, cred: Credential) -> bool:
        reading = sink.read()
        return reading.valid is not None and reading.valid.access_token == cred.access_token

    def everywhere(self, cred: Credential, skip: Sequence[object] = ()) -> bool:
        files = all(self.cred(d) == cred for d in self.dirs if d not in skip)
        return files and all(self.sink_holds(s, cred) for s in self.sinks if s not in skip)

    def status(self) -> dict[str, Any]:
        out = credsync(["status", "--json", "--config", str(self.config)], self.env)
        assert out.returncode == 0, out.stderr
        obj: dict[str, Any] = json.loads(out.stdout)
        return obj

    def row(self, name: str) -> dict[str, Any]:
        return next(r for r in self.status()["stores"] if r["name"] == name)

    def log_text(self) -> str:
        path = self.root / "log" / "credsync.log"
        return path.read_text() if path.exists() else ""

    def temp_files(self) -> set[Path]:
        """Temp files anywhere credsync writes (a sink may live outside the root)."""
        places = [self.root, *(s.path.parent for s in self.sinks)]
        return {p for place in places for p in place.rglob("*.tmp")}


def make_scene(root: Path, sink_dirs: Sequence[Path] = (), keychain: bool = False,
               refresh: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Scene:
    dirs = [root / "cfg0", root / "cfg1"]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    sinks = [SinkStore(root / "sinks" / "token", "access-token"),
             *(SinkStore(d / "token", "access-token") for d in sink_dirs)]
    state = root / "state"
    config = write_config(root / "config.toml", dirs, state, keychain=keychain,
                          log_file=root / "log" / "credsync.log",
                          sinks=[{"path": s.path, "format": s.format} for s in sinks],
                          refresh=refresh)
    return Scene(root, dirs, sinks, state, config, env or dict(os.environ))


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    s = make_scene(tmp_path)
    yield s
    if s.agent is not None:
        s.agent.kill()


def cli_write(d: Path, cred: Credential) -> None:
    """What the CLI does: temp file + rename."""
    tmp = d / ".credentials.json.cli"
    tmp.write_text(json.dumps({"claudeAiOauth": cred.to_json_obj()}))
    os.replace(tmp, d / ".credentials.json")


# ===== other processes ====================================================================
SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    path, data = sys.argv[1], sys.argv[2].encode()
    chunks, pause = int(sys.argv[3]), float(sys.argv[4])
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    print(os.fstat(fd).st_ino, flush=True)
    size = -(-len(data) // chunks)
    for i in range(0, len(data), size):
        time.sleep(pause)  # the fault itself: a writer this slow
        os.write(fd, data[i:i + size])
    os.close(fd)
    print("done", flush=True)
""")


def test_slow_in_place_writer_is_never_acted_on_half_way(scene: Scene) -> None:
    old = make_cred(BASE_MS)
    for d in scene.dirs:
        write_cred(d, old)
    scene.start()
    wait_for(lambda: scene.everywhere(old), 10, "sync")
    newer = make_cred(BASE_MS + 60_000)
    doc = json.dumps({"claudeAiOauth": newer.to_json_obj(), "mcpOAuth": {"k": "v"}}, indent=2)
    target = scene.dirs[1] / ".credentials.json"
    # Ten chunks 0.2 s apart: partial JSON stays visible for 2 s, four times the repair grace.
    writer = subprocess.run([sys.executable, "-c", SLOW_WRITER, str(target), doc, "10", "0.2"],
                            capture_output=True, text=True, timeout=30)
    assert writer.returncode == 0, writer.stderr
    inode = int(writer.stdout.split()[0])
    # Never replaced while it was being written: the writer's file is the file, whole.
    assert target.stat().st_ino == inode
    assert target.read_text() == doc
    wait_for(lambda: scene.everywhere(newer), 5, "the writer's login everywhere")
    assert target.stat().st_ino == inode  # nothing needed writing there afterwards either
    assert f"file:{scene.dirs[1]}: restored" not in scene.log_text()


def test_old_cli_saving_an_older_login_over_a_newer_is_undone_once(scene: Scene) -> None:
    newer = make_cred(BASE_MS + 60_000)
    write_cred(scene.dirs[0], newer)
    agent = scene.start()
    wait_for(lambda: scene.everywhere(newer), 10, "sync")
    before = agent.stats(scene.state)
    # Release 2.1.37 saves without compare-and-swap: an older login lands over the newer one.
    older = make_cred(BASE_MS)
    cli_write(scene.dirs[1], older)
    wait_for(lambda: scene.cred(scene.dirs[1]) == newer, 5, "the newer login restored")
    # It converges: one write undoes it, and nothing keeps going back and forth.
    rounds = agent.stats(scene.state)["rounds"]
    cli_write(scene.dirs[0], newer)  # an unrelated event: a later round must write nothing
    wait_for(lambda: agent.stats(scene.state)["rounds"] > rounds, 5, "another round")
    after = agent.stats(scene.state)
    assert after["writes"] - before["writes"] == 1
    assert scene.everywhere(newer)


LOCK_HOLDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from agent.locks.mkdirlock import MkdirLock
    marked = sys.argv[2] == "marked"
    lock = MkdirLock(Path(sys.argv[1]), stale_s=60, marked=marked)
    lock.acquire(5)
    print("held", flush=True)
    time.sleep(600)
""")


def hold_lock(path: Path, marked: bool, kill: bool) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path),
                             "marked" if marked else "plain"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    if kill:
        proc.kill()
        proc.wait(timeout=5)
    return proc


def test_storage_lock_of_a_killed_cli_is_taken_over_at_its_stale_time_not_before(
        scene: Scene) -> None:
    old = make_cred(BASE_MS)
    write_cred(scene.dirs[0], old)
    scene.start()
    wait_for(lambda: scene.everywhere(old), 10, "sync")
    lock = scene.dirs[1] / ".storage-write.lock"
    hold_lock(lock, marked=False, kill=True)  # a CLI killed while saving: an unmarked lock
    age = STORAGE_WRITE_STALE_S - 2  # backdated: stale in 2 s rather than in 15
    os.utime(lock, (time.time() - age, time.time() - age))
    newer = make_cred(BASE_MS + 1000)
    start = time.monotonic()
    cli_write(scene.dirs[0], newer)
    took = wait_for(lambda: scene.cred(scene.dirs[1]) == newer, 10, "cfg1 written")
    assert took >= 1.8, f"a live-looking lock was taken over after {took:.2f} s"
    wait_for(lambda: not lock.exists(), 2, "the lock released")
    wait_for(lambda: scene.everywhere(newer), 5, "everything in step")
    assert time.monotonic() - start < 8


def test_only_a_dead_credsyncs_lock_is_freed_before_its_stale_time(tmp_path: Path) -> None:
    dead_credsync = tmp_path / "a.lock"
    dead_cli = tmp_path / "b.lock"
    live_credsync = tmp_path / "c.lock"
    hold_lock(dead_credsync, marked=True, kill=True)
    hold_lock(dead_cli, marked=False, kill=True)
    live = hold_lock(live_credsync, marked=True, kill=False)
    try:
        start = time.monotonic()
        with MkdirLock(dead_credsync, stale_s=60, marked=True).hold(2):
            assert time.monotonic() - start < 0.5  # its owner is gone: free at once
        for path in (dead_cli, live_credsync):
            with pytest.raises(LockError):
                MkdirLock(path, stale_s=60, marked=True).acquire(0.3)
            assert path.is_dir()
    finally:
        live.kill()
        live.wait(timeout=5)


def test_config_dir_deleted_and_recreated_while_the_agent_runs(scene: Scene) -> None:
    old = make_cred(BASE_MS)
    write_cred(scene.dirs[0], old)
    agent = scene.start()
    wait_for(lambda: scene.everywhere(old), 10, "sync")
    shutil.rmtree(scene.dirs[1])
    newer = make_cred(BASE_MS + 1000)
    cli_write(scene.dirs[0], newer)
    wait_for(lambda: scene.everywhere(newer, skip=[scene.dirs[1]]), 5, "the others in step")
    # A removed login is a logout: the agent does not bring the dir back.
    wait_for(lambda: scene.row(f"file:{scene.dirs[1]}")["state"] == "logged-out", 5, "shown")
    assert not scene.dirs[1].exists() and agent.proc.poll() is None
    # Re-created, and the user logs in there: the watch follows the new directory.
    scene.dirs[1].mkdir()
    newest = make_cred(BASE_MS + 2000)
    cli_write(scene.dirs[1], newest)
    wait_for(lambda: scene.everywhere(newest), 5, "the new login everywhere")
    assert "Traceback" not in agent.output()


def test_temp_files_of_a_killed_writer_are_removed_once_stale(scene: Scene) -> None:
    write_cred(scene.dirs[0], make_cred(BASE_MS))
    scene.state.mkdir(mode=0o700)
    old = [scene.dirs[0] / "..credentials.json.k1ll3d_a.tmp",
           scene.state / ".agent.json.k1ll3d_b.tmp"]
    young = scene.dirs[1] / "..credentials.json.inprogr3.tmp"
    cli_own = scene.dirs[1] / ".credentials.json.tmp.1234.5678"  # not ours: never touched
    for path in [*old, young, cli_own]:
        path.write_text("{partial")
    for path in old:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    scene.start()
    wait_for(lambda: not any(p.exists() for p in old), 5, "stale temp files removed")
    assert young.exists() and cli_own.exists()


# ===== the machine ========================================================================
@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    path.mkdir(parents=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                          str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        # Never a skip: CI runs as root and can mount; say so when it cannot.
        raise RuntimeError(f"cannot mount a tmpfs for the disk-full test ({out.stderr.strip()});"
                           " run the tests as root with CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte."""
    junk = directory / "junk"
    for chunk in (4096, 1):
        with contextlib.suppress(OSError), open(junk, "ab") as fh:
            while True:
                fh.write(b"\0" * chunk)
                fh.flush()
    return junk


def assert_sink_error_then_retried(scene: Scene, bad: SinkStore, old: Credential,
                                   message: str, heal: Any) -> None:
    newer = make_cred(BASE_MS + 1000)
    cli_write(scene.dirs[0], newer)
    # The others are still written; the bad sink keeps its old content whole.
    wait_for(lambda: scene.everywhere(newer, skip=[bad]), 5, "the other stores in step")
    wait_for(lambda: scene.row(bad.name)["state"] == "error", 10,
             f"the error in status ({bad.path.parent}: {sorted(os.listdir(bad.path.parent))})")
    row = scene.row(bad.name)
    assert message in row["detail"], row
    assert bad.path.read_text() == old.access_token + "\n"
    assert scene.temp_files() == set(), "a partial file was left behind"
    heal()
    # Retried by itself: no further event is needed.
    wait_for(lambda: scene.sink_holds(bad, newer), 10, "the sink written after the fault")
    wait_for(lambda: scene.row(bad.name)["state"] == "in-sync", 5, "the error cleared")
    assert scene.temp_files() == set()


def test_disk_full_on_one_sink(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full") as full:
        scene = make_scene(tmp_path / "w", sink_dirs=[full])
        old = make_cred(BASE_MS)
        write_cred(scene.dirs[0], old)
        try:
            scene.start()
            wait_for(lambda: scene.everywhere(old), 10, "sync")
            junk = fill(full)
            assert_sink_error_then_retried(scene, scene.sinks[1], old, "No space left",
                                           junk.unlink)
        finally:
            if scene.agent is not None:
                scene.agent.kill()


def without_permission_override() -> list[str]:
    """Run a process as this user but without root's right to ignore file permissions."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        raise RuntimeError("setpriv is missing: apt-get install util-linux")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_permission_denied_on_one_sink(tmp_path: Path) -> None:
    locked = tmp_path / "w" / "locked"
    scene = make_scene(tmp_path / "w", sink_dirs=[locked])
    old = make_cred(BASE_MS)
    write_cred(scene.dirs[0], old)
    try:
        scene.start(prefix=without_permission_override())
        wait_for(lambda: scene.everywhere(old), 10, "sync")
        locked.chmod(0o500)
        assert_sink_error_then_retried(scene, scene.sinks[1], old, "Permission denied",
                                       lambda: locked.chmod(0o700))
    finally:
        locked.chmod(0o700)
        if scene.agent is not None:
            scene.agent.kill()


def test_keychain_gone_and_locked_then_back(tmp_path: Path,
                                            real_keyring: RealKeyring) -> None:  # noqa: F811
    from agent.stores.keychain import OWN_SERVICE, own_account

    scene = make_scene(tmp_path, keychain=True, env=real_keyring.env)

    def keychain() -> Credential | None:
        raw = real_keyring.lookup(OWN_SERVICE, own_account(scene.dirs))
        return parse_document(raw.encode())[0].valid if raw else None

    first = make_cred(BASE_MS)
    write_cred(scene.dirs[0], first)
    try:
        agent = scene.start()
        wait_for(lambda: keychain() == first, 10, "keychain written")
        for fault, cred in (("gone", make_cred(BASE_MS + 1000)),
                            ("locked", make_cred(BASE_MS + 2000))):
            if fault == "gone":
                real_keyring.stop_daemon()
            else:
                real_keyring.lock()
            cli_write(scene.dirs[0], cred)
            wait_for(lambda c=cred: scene.everywhere(c), 5, "the files in step")  # type: ignore[misc]
            wait_for(lambda: scene.row("keychain")["state"] == "error", 10, f"keychain {fault}")
            assert agent.proc.poll() is None
            # Back (a locked keyring comes back unlocked with its daemon): caught up by itself.
            if fault == "locked":
                real_keyring.stop_daemon()
            real_keyring.start_daemon()
            wait_for(lambda c=cred: keychain() == c, 15, f"keychain back after {fault}")  # type: ignore[misc]
        assert "Traceback" not in agent.output()
    finally:
        if scene.agent is not None:
            scene.agent.kill()


# ===== the clock and the network: the in-process agent, a FakeClock, real HTTP =============
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Loop:
    """The agent loop with refresh, driven by hand: ``advance`` moves the clock and steps."""

    def __init__(self, root: Path, server: OAuthServer, clock: FakeClock,
                 lifetime_s: float, timeout_s: float = 2.0) -> None:
        self.root = root
        self.server = server
        self.clock = clock
        self.dirs = [root / "cfg0", root / "cfg1"]
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.sink = SinkStore(root / "sinks" / "token", "access-token")
        self.files = [ClaudeFileStore(d) for d in self.dirs]
        self.state = Ledger(root / "state")
        self.section = RefreshSection(token_url=server.url, jitter=0, at_fraction=0.5,
                                      client_window_s=0, margin_s=0,
                                      nominal_lifetime_s=lifetime_s, timeout_s=timeout_s)
        self.refresher = HttpRefresher.from_settings(self.section, clock)
        self.events: queue.Queue[object] = queue.Queue()
        self.agent = self.build()
        self.auth_states: list[str] = []

    def build(self) -> Agent:
        writer = Reconciler([*self.files, self.sink], self.state, self.clock)
        coord = Coordinator(self.section, writer, self.dirs, self.refresher, self.clock,
                            lock_wait_s=1, cli_lock_wait_s=0.5)
        # Full-ceiling backoff (1, 2, 4 ... 60 s): the delays are exact.
        driver = RefreshDriver(coord, Backoff(min_s=1, max_s=60, rand=lambda: 1.0))
        agent = Agent([*self.files, self.sink], self.state, self.clock, self.events,
                      refresh=driver)
        agent.load()
        return agent

    @property
    def records(self) -> Any:
        assert self.agent.refresh is not None
        return self.agent.refresh.coordinator.records

    @property
    def auth_state(self) -> str:
        assert self.agent.refresh is not None
        return self.agent.refresh.coordinator.refresh_state()

    def login(self) -> Credential:
        oauth = self.server.issue_login()
        cred = Credential(oauth)
        write_cred(self.dirs[0], cred)
        self.agent.reconcile()
        return cred

    def step(self) -> None:
        self.agent.step(timeout=0)
        self.auth_states.append(self.auth_state)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, stopping at every deadline the agent sets on the way."""
        end = self.clock.now() + seconds
        for _ in range(100_000):
            self.step()
            now = self.clock.now()
            if now >= end:
                return
            self.clock.advance(min(max(self.agent.next_timeout(), 0.001), end - now))
        raise AssertionError("the agent never let time pass")

    def creds(self) -> list[Credential | None]:
        return [f.read().valid for f in self.files]

    def in_step(self, cred: Credential) -> bool:
        sink = self.sink.read().valid
        return all(c == cred for c in self.creds()) and sink is not None and \
            sink.access_token == cred.access_token

    def requests(self, cred: Credential) -> list[str]:
        fp = fingerprint_of(cred.refresh_token)
        return [r.outcome for r in self.server.log() if r.fingerprint == fp]

    def close(self) -> None:
        self.refresher.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def server(clock: FakeClock) -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=1000, clock=clock, port=free_port()) as srv:
        yield srv


@pytest.fixture
def loop(tmp_path: Path, server: OAuthServer, clock: FakeClock) -> Iterator[Loop]:
    lp = Loop(tmp_path, server, clock, lifetime_s=1000)
    yield lp
    lp.close()


def test_suspend_past_expiry_refreshes_once_at_once(loop: Loop) -> None:
    cred = loop.login()
    loop.clock.jump(5000)  # asleep through the deadline and the expiry (monotonic stood still)
    loop.step()
    # No jitter for a local wake: the herd is this machine's sessions, waiting on the CLI
    # locks credsync holds. One request, in the very first step after the wake.
    assert loop.requests(cred) == ["rotated"]
    loop.advance(10)
    assert loop.requests(cred) == ["rotated"]
    new = loop.creds()[0]
    assert new is not None and new != cred and loop.in_step(new)
    assert new.expires_at == pytest.approx(loop.clock.now() + 1000, abs=11)


def test_clock_going_back_an_hour_stalls_nothing(loop: Loop) -> None:
    cred = loop.login()
    loop.advance(5)
    loop.clock.jump(-3600)
    # The audit (the only look at unwatched stores) still comes within its period.
    rounds = loop.agent.rounds
    loop.advance(61)
    assert loop.agent.rounds > rounds
    # A refresh that failed is retried after its backoff, not that much later.
    loop.server.inject_status(503, count=1000)
    loop.clock.jump(3600)
    loop.advance(450)  # through the deadline (500 s after the login): attempts, all 503
    failed = loop.requests(cred)
    assert len(failed) >= 3 and set(failed) == {"fault:503"}
    loop.server.clear_faults()
    driver = loop.agent.refresh
    assert driver is not None and driver.retry_at is not None
    backoff = driver.retry_at - loop.clock.now()
    loop.clock.jump(-10)  # still past the deadline: the refresh is still due
    loop.advance(backoff + 0.5)
    assert loop.requests(cred) == [*failed, "rotated"]
    new = loop.creds()[0]
    assert new is not None and loop.in_step(new)
    # The clock back never makes it refresh again before the new token's deadline.
    loop.advance(400)
    assert loop.requests(new) == []


@pytest.mark.parametrize("fault", ["500", "502", "503", "429", "down"])
def test_transient_failures_back_off_quietly_then_say_offline(loop: Loop, fault: str) -> None:
    cred = loop.login()
    if fault == "down":
        loop.server.stop()
    else:
        loop.server.inject_status(int(fault), count=1000,
                                  retry_after="7" if fault == "429" else None)
    loop.advance(999)  # from the deadline (500 s) to just before the expiry
    attempts = [r for r in loop.server.log()] if fault != "down" else []
    assert "relogin-required" not in loop.auth_states  # no alarm while the token works
    assert loop.auth_state == "retrying"
    if fault != "down":
        times = [r.time for r in attempts]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert 5 <= len(times) <= 16, times  # backed off: 1, 2, 4 ... 60 s, not a loop
        assert gaps == sorted(gaps) and gaps[-1] == pytest.approx(60, abs=1)
        if fault == "429":
            assert min(gaps) >= 7  # Retry-After honoured
    loop.advance(61)  # expired now
    assert loop.auth_state == "offline"
    assert loop.creds()[0] == cred  # nothing was cleared or replaced
    if fault == "down":
        loop.server.start()
    else:
        loop.server.clear_faults()
    loop.advance(61)
    assert loop.requests(cred)[-1] == "rotated"
    assert loop.auth_state == "ok"
    new = loop.creds()[0]
    assert new is not None and new != cred and loop.in_step(new)
    assert loop.server.stats().invalid_grants == 0


def test_slow_answer_within_the_timeout_is_waited_for(tmp_path: Path, server: OAuthServer,
                                                      clock: FakeClock) -> None:
    loop = Loop(tmp_path, server, clock, lifetime_s=1000, timeout_s=1.0)
    try:
        cred = loop.login()
        server.inject_delay(0.3)
        loop.advance(501)
        new = loop.creds()[0]
        assert loop.requests(cred) == ["rotated"] and new is not None and new != cred
        assert loop.in_step(new) and loop.auth_state == "ok"
    finally:
        loop.close()


def assert_relogin_and_never_resent(loop: Loop, cred: Credential) -> None:
    assert loop.auth_state == "relogin-required"
    assert loop.creds()[0] == cred  # nothing cleared: the sessions keep what they have
    sent = len(loop.requests(cred))
    loop.advance(3600)
    loop.agent = loop.build()  # a restart
    loop.agent.reconcile()
    loop.advance(3600)
    assert len(loop.requests(cred)) == sent == 1, "the token was sent again"
    assert loop.server.stats().invalid_grants == 0


def test_answer_lost_after_the_server_rotated_means_relogin_never_a_loop(
        tmp_path: Path, server: OAuthServer, clock: FakeClock) -> None:
    loop = Loop(tmp_path, server, clock, lifetime_s=1000, timeout_s=0.3)
    try:
        cred = loop.login()
        server.inject_delay(0.6)  # answers after the client gave up: the rotation is lost
        loop.advance(501)
        wait_for(lambda: loop.requests(cred) == ["rotated"], 5, "the server's rotation")
        assert_relogin_and_never_resent(loop, cred)
    finally:
        loop.close()


@pytest.mark.parametrize("fault", ["garbage", "drop"])
def test_unreadable_answer_is_treated_as_lost_and_a_cli_refresh_recovers(
        loop: Loop, fault: str) -> None:
    cred = loop.login()
    loop.server.inject_garbage() if fault == "garbage" else loop.server.inject_drop()
    loop.advance(501)
    # The server did not rotate, but credsync cannot know that: it never risks a reuse.
    assert loop.requests(cred) == ["garbage" if fault == "garbage" else "dropped"]
    assert loop.auth_state == "relogin-required"
    # A CLI session, which keeps no journal, refreshes the same token and succeeds:
    session = SimSession(loop.dirs[1], loop.server.url, window_s=1e9)
    assert session.step(loop.clock.now()).value == "refreshed"
    loop.events.put(FileChanged(loop.files[1].path))
    loop.advance(1)
    new = loop.creds()[1]
    assert new is not None and loop.in_step(new)  # adopted: everyone has the new login
    loop.advance(600)  # and credsync refreshes it when due, as usual
    assert loop.requests(new) == ["rotated"] and loop.auth_state == "ok"
    assert loop.server.stats().invalid_grants == 0


def test_full_state_dir_never_costs_a_refreshed_token(tmp_path: Path, server: OAuthServer,
                                                      clock: FakeClock) -> None:
    with tmpfs(tmp_path / "state", size="64k"):
        loop = Loop(tmp_path, server, clock, lifetime_s=1000)
        try:
            cred = loop.login()
            loop.agent.save()  # the state files exist, then the disk fills up
            loop.state.journal.release("-", 0.0)  # its page is taken: appends fit
            fill(loop.state.path)
            loop.advance(501)
            # Refreshed, and the new login reached the stores, whatever the state dir refused.
            new = loop.creds()[0]
            assert loop.requests(cred) == ["rotated"]
            assert new is not None and new != cred and loop.in_step(new)
            assert loop.state.load_last_good() != new  # refused by the full disk
        finally:
            loop.close()


# ===== lost after rotation, with the real agent across restarts ============================
def test_rotation_lost_on_the_wire_real_agent_asks_for_relogin_across_restarts(
        tmp_path: Path) -> None:
    with OAuthServer(access_lifetime_s=4) as srv:
        oauth = srv.issue_login()
        scene = make_scene(tmp_path, refresh={
            "token_url": srv.url, "jitter": 0, "at_fraction": 0.5, "client_window_s": 0,
            "margin_s": 0, "nominal_lifetime_s": 4, "timeout_s": 2})
        cred = Credential(oauth)
        write_cred(scene.dirs[0], cred)
        srv.inject_lost()
        try:
            scene.start()
            wait_for(lambda: scene.status()["login"]["state"] == "relogin-required", 15,
                     "relogin-required in status")
            scene.agent.stop()  # type: ignore[union-attr]
            scene.start()
            out = credsync(["token", "--config", str(scene.config)])
            assert out.returncode == 3 and "/login" in out.stderr
            wait_for(lambda: scene.cred(scene.dirs[1]) == cred, 5, "the dirs still in step")
            assert [r.outcome for r in srv.log()] == ["lost"]
            assert srv.stats().invalid_grants == 0
            assert cred.refresh_token not in out.stderr + out.stdout + scene.log_text()
        finally:
            if scene.agent is not None:
                scene.agent.kill()
