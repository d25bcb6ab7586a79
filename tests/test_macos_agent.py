"""The whole agent on macOS, on Linux: the real loop (Agent, Reconciler, Coordinator,
RefreshDriver, HttpRefresher) with Claude Code's Keychain item on the ``security`` double, two
of the CLI's credential files and a sink, against the simulated OAuth server over HTTP.

The double also plays the CLI (agent.sim.claude_keychain): its items carry the identity of
``/usr/bin/security`` (partition ``apple-tool:``), as the CLI's own writes do, so credsync's
reads through ``security`` are allowed without a dialog, and a Claude Code session's read after
every credsync write answers "would it still see its login?". Time is a FakeClock; the double's
clock is kept on it (``clock_offset_s``), so that the store's one-second ``mdat`` rule sees the
same time the keychain stamps items with. The Keychain is polled (``changed()`` every
``poll_s``): nothing here sends the agent an event for it.

Last, the same as a real process on the real clock (tests/macagent.py: ``credsync run``'s steps
with the darwin stores on the double).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.status import collect, render_text
from agent.clock import FakeClock
from agent.config import RefreshSection
from agent.credential import Credential, fingerprint_of
from agent.ledger import Ledger
from agent.loop.agent import AUDIT_S, Agent
from agent.loop.watcher import FileChanged
from agent.reconcile import Reconciler
from agent.refresh.coordinator import Coordinator, Kind, RefreshDriver
from agent.refresh.http import Backoff, HttpRefresher
from agent.sim.claude_keychain import cli_login, cli_read, cli_write, seal_overflow
from agent.sim.security import SecurityDouble
from agent.sim.server import OAuthServer
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.macos.identity import ClaudeEnv, KeychainIdentity, identity, session_env
from agent.stores.macos.security import SecurityTool
from agent.stores.macos.store import POLL_S, MacKeychainStore, WriteRecords
from agent.stores.sink import SinkStore
from tests.agentproc import REPO, AgentProcess, wait_for, write_config
from tests.factories import make_cred, read_doc, write_cred

pytestmark = pytest.mark.integration  # the simulated OAuth server over HTTP, real processes

LIFETIME_S = 200.0  # the server's access-token lifetime: refreshed 100 s after each login
PYTHON = "/opt/homebrew/Cellar/python@3.12/3.12.7/bin/python3.12"  # what keyring ran under


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MacAgent:
    """The agent as ``credsync run`` assembles it on darwin (build_stores: the files, the
    Keychain item of the default config dir, the sinks), stepped by hand."""

    def __init__(self, root: Path, server: OAuthServer, clock: FakeClock) -> None:
        self.clock = clock
        self.server = server
        self.double = SecurityDouble(root / "keychain")
        self.double.configure(ui=True)  # a desktop: any access problem would be a dialog
        self.home = root / "home"
        self.dirs = [self.home / ".claude", root / "work"]
        for d in self.dirs:
            d.mkdir(parents=True)
        self.ident = identity(ClaudeEnv(user="alice"), self.home)  # the default dir's item
        self.tool = SecurityTool(self.double.executable)  # the CLI's 2 s deadline
        self.keychain = MacKeychainStore(
            self.ident, self.tool, config_dir=self.dirs[0], clock=clock.now,
            records=WriteRecords(root / "state" / "keychain-writes.json"))
        self.files = [ClaudeFileStore(d) for d in self.dirs]
        self.sink = SinkStore(root / "sinks" / "token", "access-token")
        self.ledger = Ledger(root / "state")
        self.section = RefreshSection(token_url=server.url, jitter=0, at_fraction=0.5,
                                      client_window_s=0, margin_s=0,
                                      nominal_lifetime_s=LIFETIME_S, timeout_s=2.0)
        self.refresher = HttpRefresher.from_settings(self.section, clock)
        stores = [*self.files, self.keychain, self.sink]
        self.coord = Coordinator(self.section, Reconciler(stores, self.ledger, clock),
                                 self.dirs, self.refresher, clock,
                                 lock_wait_s=1, cli_lock_wait_s=0.5)
        self.driver = RefreshDriver(self.coord, Backoff(min_s=1, max_s=60, rand=lambda: 1.0))
        self.events: queue.Queue[object] = queue.Queue()
        self.agent = Agent(stores, self.ledger, clock, self.events, refresh=self.driver,
                           writer=self.coord.writer)
        self.agent.load()
        self._keep_keychain_time()

    def _keep_keychain_time(self) -> None:
        # The double stamps mdat from its own clock: on the FakeClock, as a real keychain is on
        # the Mac's wall clock.
        self.double.configure(clock_offset_s=self.clock.now() - time.time())

    def step(self) -> None:
        self.agent.step(timeout=0)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, stopping at every deadline the agent sets on the way."""
        end = self.clock.now() + seconds
        self.step()
        while self.clock.now() < end:
            self.clock.advance(min(max(self.agent.next_timeout(), 0.001), end - self.clock.now()))
            self._keep_keychain_time()
            self.step()

    def run_until(self, done: Callable[[], bool], within_s: float, what: str) -> float:
        """Advance deadline by deadline until ``done``; the fake seconds it took."""
        start = self.clock.now()
        self.step()
        while not done():
            if self.clock.now() - start > within_s:
                raise AssertionError(f"not within {within_s} s: {what}")
            self.clock.advance(max(self.agent.next_timeout(), 0.001))
            self._keep_keychain_time()
            self.step()
        return self.clock.now() - start

    # ----- what each side sees ------------------------------------------------------------
    def cli(self) -> dict[str, Any] | None:
        """The login a Claude Code session reads from its item."""
        return cli_login(self.tool, self.ident)

    def cli_has(self, cred: Credential) -> bool:
        login = self.cli()
        return login is not None and login["accessToken"] == cred.access_token and \
            login["refreshToken"] == cred.refresh_token

    def cli_moved_from(self, cred: Credential) -> Callable[[], bool]:
        return lambda: not self.cli_has(cred)

    def everywhere(self, cred: Credential) -> bool:
        sink = self.sink.read().valid
        return all(f.read().valid == cred for f in self.files) and self.cli_has(cred) and \
            sink is not None and sink.access_token == cred.access_token

    def requests(self, cred: Credential) -> list[str]:
        fp = fingerprint_of(cred.refresh_token)
        return [r.outcome for r in self.server.log() if r.fingerprint == fp]

    def cli_login_now(self, **other: Any) -> Credential:
        """A fresh `/login` in a Claude Code session: the CLI writes its Keychain item."""
        oauth = self.server.issue_login()
        assert cli_write(self.tool, self.ident, {"claudeAiOauth": oauth, **other}) == 0
        return Credential(oauth)

    def close(self) -> None:
        self.refresher.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def server(clock: FakeClock) -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=LIFETIME_S, clock=clock, port=free_port()) as srv:
        yield srv


@pytest.fixture
def mac(tmp_path: Path, server: OAuthServer, clock: FakeClock) -> Iterator[MacAgent]:
    world = MacAgent(tmp_path, server, clock)
    yield world
    world.close()


# ----- (a) a login made in Claude Code reaches everything, by the poll -------------------------

def test_a_cli_login_in_the_keychain_is_noticed_by_the_poll_and_reaches_every_store(
        mac: MacAgent) -> None:
    first = mac.cli_login_now()
    mac.step()  # the agent's first round
    assert mac.everywhere(first)
    # A round at the first poll (the item's mdat was too recent to tell a second write in
    # the same second), then the audit 60 s later: from then on polls answer "unchanged".
    mac.advance(AUDIT_S + 2 * POLL_S)
    rounds = mac.agent.rounds
    decrypts = mac.double.decrypts(mac.ident.service, mac.ident.account)
    mac.advance(3 * POLL_S)
    assert mac.agent.rounds == rounds  # an unchanged item costs no round...
    assert mac.double.decrypts(mac.ident.service, mac.ident.account) == decrypts  # ...no -w
    # A new /login in a session: the CLI rewrites its item; nobody tells the agent.
    second = mac.cli_login_now(mcpOAuth={"srv|1": {"accessToken": "mcp", "expiresAt": 1}})
    assert mac.files[0].read().valid == first  # not yet: the agent has not looked
    took = mac.run_until(lambda: mac.everywhere(second), AUDIT_S, "the new login everywhere")
    assert took <= POLL_S  # by the poll, not by the next audit
    assert mac.agent.rounds == rounds + 1
    assert mac.double.dialogs() == []
    assert second.refresh_token not in json.dumps(mac.double.calls())


# ----- (b) a login that appears in a file reaches the CLI's item, keeping the rest ------------

def test_a_login_in_a_file_reaches_the_keychain_item_and_the_cli_reads_it_whole(
        mac: MacAgent) -> None:
    mcp = {f"srv{i}|x": {"accessToken": f"tok{i}" * 40, "expiresAt": i} for i in range(6)}
    doc: dict[str, Any] = {"claudeAiOauth": mac.server.issue_login(), "mcpOAuth": mcp,
           "someFutureKey": [1, 2.5, None, True, "caf\u00e9"]}
    main, blob = seal_overflow(doc, ["mcpOAuth"])
    overflow_service = mac.ident.overflow_service("a")
    mac.double.put(overflow_service, mac.ident.account, blob)  # as the CLI's sealing leaves it
    assert cli_write(mac.tool, mac.ident, main) == 0
    mac.step()
    old = Credential(doc["claudeAiOauth"])
    assert mac.everywhere(old)
    mac.advance(10)
    # Somewhere else (another machine, a session with a file store) logged in: the file.
    new = Credential(mac.server.issue_login())
    write_cred(mac.dirs[1], new, theirs="kept")
    mac.events.put(FileChanged(mac.files[1].path))  # what the watcher says
    mac.run_until(lambda: mac.everywhere(new), 1.0, "the file's login everywhere")
    seen = cli_read(mac.tool, mac.ident)
    assert seen.said == "item" and not seen.partial
    assert seen.data is not None and seen.data["mcpOAuth"] == mcp  # sealed sections reachable
    assert seen.data["someFutureKey"] == doc["someFutureKey"]
    item = mac.double.item(mac.ident.service, mac.ident.account)
    assert item is not None and "apple-tool:" in item.partitions  # still the CLI's item
    written = json.loads(item.secret)
    assert written["keychainOverflow"] == main["keychainOverflow"]  # pointer verbatim
    assert set(written) == set(main)
    sealed = mac.double.item(overflow_service, mac.ident.account)
    assert sealed is not None and sealed.secret.decode() == blob  # byte for byte, never written
    assert read_doc(mac.dirs[1])["theirs"] == "kept"
    assert mac.double.dialogs() == []


# ----- (c) credsync refreshes: the CLI's item gets the new login -----------------------------

def test_a_proactive_refresh_writes_the_keychain_item_once_per_rotation(mac: MacAgent) -> None:
    login = mac.cli_login_now()
    mac.step()
    assert mac.everywhere(login)
    current = login
    for _ in range(2):
        took = mac.run_until(mac.cli_moved_from(current), LIFETIME_S, "a refresh")
        assert LIFETIME_S * 0.5 - 1 <= took <= LIFETIME_S * 0.5 + 1  # at the deadline
        new = mac.files[0].read().valid
        assert new is not None and new != current
        assert mac.driver.last is not None and mac.driver.last.kind is Kind.REFRESHED
        mac.step()  # the round after the refresh
        assert mac.everywhere(new)  # the CLI's item holds the new login, files and sink too
        assert mac.server.check_access(new.access_token)
        assert mac.requests(current) == ["rotated"]  # one request for this rotation
        assert mac.clock.now() < current.expires_at  # before the old token ran out
        current = new
    mac.advance(20)
    assert mac.server.stats().token_requests == 2
    assert mac.server.stats().invalid_grants == 0
    assert mac.double.dialogs() == []


# ----- (d) an item another program made: no refresh, and status says what to run ----------------

def test_a_foreign_item_blocks_refreshing_and_status_gives_the_fix(mac: MacAgent) -> None:
    mac.double.configure(ui=False)  # over SSH: a refused read is exit 36, not a dialog
    login = Credential(mac.server.issue_login())
    write_cred(mac.dirs[0], login)
    # What python-keyring left: the item re-made by SecItemAdd, trusting only Python.
    mac.double.put(mac.ident.service, mac.ident.account,
                   json.dumps({"claudeAiOauth": login.to_json_obj()}),
                   creator="cdhash:0123456789abcdef", apps=(PYTHON,))
    before = mac.double.item(mac.ident.service, mac.ident.account)
    mac.advance(LIFETIME_S * 0.5 + 5)  # past the deadline
    assert mac.driver.last is not None and mac.driver.last.kind is Kind.BLOCKED
    assert "set-generic-password-partition-list -S apple-tool:,apple:" in mac.driver.last.message
    assert mac.server.log() == []  # nothing sent: the CLI keeps this login itself
    # One refused read, not one per poll: asking again is a dialog on a desktop.
    assert mac.double.decrypts(mac.ident.service, mac.ident.account) == 1
    assert mac.double.item(mac.ident.service, mac.ident.account) == before  # not overwritten
    assert all(f.read().valid == login for f in mac.files)  # the files are still kept in step
    status = collect(mac.coord.writer, "config.toml", mac.clock.now())
    row = next(r for r in status.stores if r.name == mac.keychain.name)
    assert row.role == "holder" and row.state == "error"
    assert "set-generic-password-partition-list -S apple-tool:,apple:" in row.detail
    assert PYTHON in row.detail
    text = render_text(status)
    assert "set-generic-password-partition-list" in text and "Claude Code's own" in text
    assert login.access_token not in text and login.refresh_token not in text


# ----- a real agent process, on the real clock --------------------------------------------------

class MacAgentProcess(AgentProcess):
    """``credsync run``'s steps in a process of its own, the stores built for darwin on the
    double (tests/macagent.py)."""

    def __init__(self, config: Path, security: Path, env: dict[str, str]) -> None:
        self.config = config
        self.log = config.with_suffix(".stderr")
        self._log_fh = open(self.log, "w")  # noqa: SIM115 - closed by stop()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.macagent", str(config), str(security)], cwd=REPO,
            env=env, stdout=self._log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_a_real_agent_process_keeps_the_clis_keychain_item_in_step(tmp_path: Path) -> None:
    double = SecurityDouble(tmp_path / "keychain")
    double.configure(ui=True)
    home = tmp_path / "home"
    dirs = [home / ".claude", tmp_path / "work"]
    for d in dirs:
        d.mkdir(parents=True)
    sink = SinkStore(tmp_path / "sinks" / "token", "access-token")
    state = tmp_path / "state"
    log_file = tmp_path / "log" / "credsync.log"
    config = write_config(tmp_path / "config.toml", dirs, state, keychain=True,
                          log_file=log_file, sinks=[{"path": sink.path, "format": sink.format}])
    ident = identity(ClaudeEnv(user="alice"), home)
    tool = SecurityTool(double.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_")}
    env.update(HOME=str(home), USER="alice")  # the Mac user whose items these are

    def hours(n: float) -> int:
        return int((time.time() + n * 3600) * 1000)

    def files_and_sink(cred: Credential) -> bool:
        held = sink.read().valid
        return all(ClaudeFileStore(d).read().valid == cred for d in dirs) and \
            held is not None and held.access_token == cred.access_token

    def cli_has(cred: Credential, of: KeychainIdentity = ident) -> bool:
        login = cli_login(tool, of)
        return login is not None and login["accessToken"] == cred.access_token

    mcp = {"srv|1": {"accessToken": "mcp-token", "expiresAt": 1}}
    first = make_cred(hours(2))
    assert cli_write(tool, ident, {"claudeAiOauth": first.to_json_obj(), "mcpOAuth": mcp}) == 0
    agent = MacAgentProcess(config, double.executable, env)
    try:
        agent.wait_started(state)
        wait_for(lambda: files_and_sink(first), 10, "the CLI's login in every file")
        # A new /login in a session: only the Keychain item changes; the poll finds it.
        second = make_cred(hours(3))
        assert cli_write(tool, ident, {"claudeAiOauth": second.to_json_obj(),
                                       "mcpOAuth": mcp}) == 0
        took = wait_for(lambda: files_and_sink(second), 30, "the new login in every file")
        assert took < AUDIT_S / 2  # found by the poll (every 5 s), not by the audit
        # A login in a file (written as the CLI writes files: temp file, rename): the watcher
        # sees it, the agent writes the item, and a session reads it.
        third = make_cred(hours(4))
        tmp = dirs[1] / ".credentials.json.tmp-cli"
        tmp.write_text(json.dumps({"claudeAiOauth": third.to_json_obj()}))
        os.replace(tmp, dirs[1] / ".credentials.json")
        wait_for(lambda: cli_has(third), 15, "the file's login in the CLI's item")
        seen = cli_read(tool, ident)
        assert seen.data is not None and seen.data["mcpOAuth"] == mcp
        wait_for(lambda: files_and_sink(third), 10, "the file's login everywhere")
        item = double.item(ident.service, ident.account)
        assert item is not None and "apple-tool:" in item.partitions
        # A session started with CLAUDE_CONFIG_DIR=<work> has an item of its own: kept too.
        work = identity(session_env(dirs[1], home, None, {"USER": "alice"}), home)
        assert work.service != ident.service and cli_has(third, work)
        assert double.dialogs() == []
        assert agent.stop() < 5
        assert agent.proc.returncode == 0
    finally:
        agent.kill()
    text = agent.output() + (log_file.read_text() if log_file.exists() else "")
    assert "keychain:Claude Code-credentials: updated" in text  # the darwin store was used
    for cred in (first, second, third):
        assert cred.access_token not in text and cred.refresh_token not in text
