"""The agent's logic, driven step by step with a fake clock, real files and an in-memory keyring."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.credential import Credential, ReadState
from agent.ledger import Ledger
from agent.loop.agent import GARBAGE_GRACE_S, Agent, Stop
from agent.loop.watcher import FileChanged
from agent.stores.base import Store
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.keychain import KeychainStore, MemoryKeyring
from agent.stores.sink import SinkStore
from tests.factories import CLEARED, make_cred, read_doc, write_cred, write_doc

NOW_MS = 1_800_000_000_000


class World:
    def __init__(self, tmp: Path, n_dirs: int = 3) -> None:
        self.dirs = [tmp / f"cfg{i}" for i in range(n_dirs)]
        for d in self.dirs:
            d.mkdir()
        self.files = [ClaudeFileStore(d) for d in self.dirs]
        self.keyring = MemoryKeyring()
        self.keychain = KeychainStore(self.keyring)
        self.sink = SinkStore(tmp / "sinks" / "token", "access-token")
        self.stores: list[Store] = [*self.files, self.keychain, self.sink]
        self.clock = FakeClock(NOW_MS / 1000)
        self.events: queue.Queue[object] = queue.Queue()
        self.state = Ledger(tmp / "state")
        self.agent = Agent(self.stores, self.state, self.clock, self.events)

    def creds(self) -> list[Credential | None]:
        return [s.read().valid for s in [*self.files, self.keychain]]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_freshest_credential_reaches_every_store(world: World) -> None:
    old, new = make_cred(NOW_MS + 1000), make_cred(NOW_MS + 9000)
    write_cred(world.dirs[0], old)
    write_cred(world.dirs[1], new, mcpOAuth={"x": {"token": "keep"}})
    report = world.agent.reconcile()
    assert report.winner is not None and report.winner.same_tokens(new)
    assert all(c is not None and c.same_tokens(new) for c in world.creds())
    assert world.sink.path.read_text() == new.access_token + "\n"
    # only claudeAiOauth changes; every other key stays where it was
    assert read_doc(world.dirs[1])["mcpOAuth"] == {"x": {"token": "keep"}}


def test_a_round_with_everything_in_sync_writes_nothing(world: World) -> None:
    write_cred(world.dirs[0], make_cred(NOW_MS + 5000))
    world.agent.reconcile()
    writes = world.agent.writes
    assert world.agent.reconcile().written == []
    assert world.agent.writes == writes


def test_cleared_store_is_restored_and_never_wins(world: World) -> None:
    good = make_cred(NOW_MS + 5000)
    write_cred(world.dirs[0], good)
    world.agent.reconcile()
    write_doc(world.dirs[1], {"claudeAiOauth": CLEARED})
    report = world.agent.reconcile()
    assert report.plan is not None and world.files[1].name in report.plan.restores
    assert read_doc(world.dirs[1])["claudeAiOauth"]["accessToken"] == good.access_token


def test_cleared_again_with_the_same_credential_is_not_restored_twice(world: World) -> None:
    good = make_cred(NOW_MS + 5000)
    write_cred(world.dirs[0], good)
    world.agent.reconcile()
    write_doc(world.dirs[1], {"claudeAiOauth": CLEARED})
    world.agent.reconcile()
    # the CLI cleared it again: the server refused `good`; restoring it would start a loop
    for d in world.dirs:
        write_doc(d, {"claudeAiOauth": CLEARED})
    report = world.agent.reconcile()
    assert report.winner is None
    assert all(world.files[i].read().state is ReadState.CLEARED for i in range(3))


def test_garbage_is_repaired_only_after_it_settles(world: World) -> None:
    good = make_cred(NOW_MS + 5000)
    write_cred(world.dirs[0], good)
    world.agent.reconcile()
    # garbage, not a document cut short (that one waits PARTIAL_GRACE_S: a write in progress)
    (world.dirs[2] / ".credentials.json").write_text('{"claudeAiOauth": {"accessT": }}')
    report = world.agent.reconcile()
    assert report.plan is not None and report.plan.waiting == [world.files[2].name]
    world.clock.advance(GARBAGE_GRACE_S)
    world.agent.step(timeout=0)
    assert world.files[2].read().valid is not None


def test_deliberate_logout_is_respected(world: World) -> None:
    good = make_cred(NOW_MS + 5000)
    write_cred(world.dirs[0], good)
    world.agent.reconcile()
    (world.dirs[1] / ".credentials.json").unlink()  # removed: a logout
    write_doc(world.dirs[2], {"mcpOAuth": {}})  # claudeAiOauth entry removed: a logout
    report = world.agent.reconcile()
    assert sorted(report.plan.logged_out if report.plan else []) == sorted(
        [world.files[1].name, world.files[2].name])
    assert not (world.dirs[1] / ".credentials.json").exists()
    assert "claudeAiOauth" not in read_doc(world.dirs[2])
    # the logout is not propagated: the other stores keep the login
    assert world.files[0].read().valid is not None and world.keychain.read().valid is not None
    # logging in again in that dir ends the logout
    newer = make_cred(NOW_MS + 8000)
    write_cred(world.dirs[1], newer)
    world.agent.reconcile()
    assert world.files[0].read().valid == newer
    assert world.files[2].read().state is ReadState.LOGGED_OUT


def test_missing_store_that_never_held_a_login_is_filled(world: World) -> None:
    good = make_cred(NOW_MS + 5000)
    write_cred(world.dirs[0], good)
    world.agent.reconcile()
    assert world.files[1].read().valid == good


def test_keychain_copy_restores_every_file_after_all_are_cleared(world: World) -> None:
    good = make_cred(NOW_MS + 5000)
    world.keychain.write(good)
    for d in world.dirs:
        write_doc(d, {"claudeAiOauth": CLEARED})
    world.agent.reconcile()
    assert all(c == good for c in world.creds())


def test_last_good_survives_a_restart(world: World, tmp_path: Path) -> None:
    good = make_cred(NOW_MS + 5000)
    write_cred(world.dirs[0], good)
    world.agent.reconcile()
    world.keyring.delete_password(world.keychain.service, world.keychain.account)
    for d in world.dirs:
        write_doc(d, {"claudeAiOauth": CLEARED})
    again = Agent(world.stores, world.state, world.clock, world.events)
    again.load()
    again.reconcile()
    assert all(c == good for c in world.creds())


def test_events_are_debounced_into_one_round(world: World) -> None:
    write_cred(world.dirs[0], make_cred(NOW_MS + 5000))
    world.agent.reconcile()
    rounds = world.agent.rounds
    newer = make_cred(NOW_MS + 9000)
    write_cred(world.dirs[0], newer)
    for _ in range(50):
        world.events.put(FileChanged(world.files[0].path))
    world.agent.step(timeout=0)  # handles the burst; the debounce deadline is not due yet
    assert world.agent.rounds == rounds
    world.clock.advance(world.agent.debounce_s)
    world.agent.step(timeout=0)
    assert world.agent.rounds == rounds + 1
    assert world.files[2].read().valid == newer


def test_own_writes_do_not_start_another_round(world: World) -> None:
    write_cred(world.dirs[0], make_cred(NOW_MS + 5000))
    world.agent.reconcile()
    rounds = world.agent.rounds
    for store in world.files[1:]:
        world.events.put(FileChanged(store.path))
    world.agent.step(timeout=0)
    world.clock.advance(1)
    world.agent.step(timeout=0)
    assert world.agent.rounds == rounds


def test_stop_event_ends_the_loop(world: World) -> None:
    world.events.put(Stop("SIGTERM"))
    assert world.agent.run() == "SIGTERM"


def test_audit_round_runs_without_events(world: World) -> None:
    world.agent._next_audit = world.clock.now() + 60
    rounds = world.agent.rounds
    assert world.agent.next_timeout() == 30.0  # never sleeps longer than the tick
    world.clock.jump(61)  # a suspend: wall-clock moved, nothing else happened
    world.agent.step(timeout=0)
    assert world.agent.rounds == rounds + 1


class FilesFirstKeyring(MemoryKeyring):
    """A keychain whose write returns only once the files hold the login (or gives up after
    a deadline): it tells whether the agent wrote the files while the keychain was busy."""

    def __init__(self, files: list[Store]) -> None:
        super().__init__()
        self.files = files
        self.saw_files_done: list[bool] = []

    def set_password(self, service: str, username: str, password: str) -> None:
        wanted = json.loads(password)["claudeAiOauth"]["accessToken"]
        deadline = time.monotonic() + 2.0
        done = False
        while not done and time.monotonic() < deadline:
            done = all((c := f.read().valid) is not None and c.access_token == wanted
                       for f in self.files)
            if not done:
                time.sleep(0.005)
        self.saw_files_done.append(done)
        super().set_password(service, username, password)


def test_the_files_are_written_while_the_keychain_write_is_under_way(tmp_path: Path) -> None:
    world = World(tmp_path)
    slow = FilesFirstKeyring([*world.files[1:], world.sink])  # the sink is written last
    keychain = KeychainStore(slow)
    agent = Agent([*world.files, keychain, world.sink], world.state, world.clock, world.events)
    new = make_cred(NOW_MS + 9000)
    write_cred(world.dirs[0], new)
    report = agent.reconcile()
    assert slow.saw_files_done == [True]  # the keychain waited; the files went on meanwhile
    assert set(report.written) == {world.files[1].name, world.files[2].name, keychain.name,
                                   world.sink.name}
    held = keychain.read().valid
    assert held is not None and held.same_tokens(new)
    keychain.close()


class ReadOnlyKeyring(MemoryKeyring):
    def set_password(self, service: str, username: str, password: str) -> None:
        raise OSError("keychain gone")


def test_a_keychain_write_that_fails_meanwhile_is_reported_and_retried(tmp_path: Path) -> None:
    world = World(tmp_path)
    keychain = KeychainStore(ReadOnlyKeyring())
    agent = Agent([*world.files, keychain, world.sink], world.state, world.clock, world.events)
    write_cred(world.dirs[0], make_cred(NOW_MS + 9000))
    report = agent.reconcile()
    assert keychain.name in report.failed and "keychain gone" in report.failed[keychain.name]
    assert world.files[1].name in report.written and world.sink.name in report.written
    assert agent.next_timeout() <= 1.0  # tried again soon, not at the next audit
    keychain.close()


class OvertakenFile(ClaudeFileStore):
    """A config dir where another writer (no lock, as the tests' writers) replaces the file
    right after this store's own write, before the agent has looked at it again."""

    def __init__(self, config_dir: Path, theirs: Credential) -> None:
        super().__init__(config_dir)
        self.theirs: Credential | None = theirs

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        changed = super().write(cred, supersedes)
        if self.theirs is not None:
            write_cred(self.config_dir, self.theirs)  # a temp file renamed into place
            self.theirs = None
        return changed


def test_a_file_replaced_right_after_our_write_is_not_taken_for_ours(tmp_path: Path) -> None:
    world = World(tmp_path)
    theirs = make_cred(NOW_MS + 20_000)  # the freshest: it must reach every store
    overtaken = OvertakenFile(world.dirs[1], theirs)
    stores = [world.files[0], overtaken, world.files[2], world.sink]
    agent = Agent(stores, world.state, world.clock, world.events)
    write_cred(world.dirs[0], make_cred(NOW_MS + 9000))
    agent.reconcile()
    assert overtaken.read().valid == theirs
    # The watcher reports both renames into dirs[1], ours and theirs, after the round.
    world.events.put(FileChanged(overtaken.path, complete=True))
    world.events.put(FileChanged(overtaken.path, complete=True))
    agent.step(timeout=0)
    assert all((c := s.read().valid) is not None and c.same_tokens(theirs)
               for s in (world.files[0], world.files[2]))


class BeatenToIt(ClaudeFileStore):
    """A config dir where another writer puts a fresher login in place just before this
    store's own write takes its lock: the store leaves it (never backwards) and writes nothing."""

    def __init__(self, config_dir: Path, theirs: Credential) -> None:
        super().__init__(config_dir)
        self.theirs: Credential | None = theirs

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        if self.theirs is not None:
            write_cred(self.config_dir, self.theirs)
            self.theirs = None
        return super().write(cred, supersedes)


def test_a_fresher_login_found_when_writing_brings_the_next_round(tmp_path: Path) -> None:
    world = World(tmp_path)
    theirs = make_cred(NOW_MS + 20_000)
    beaten = BeatenToIt(world.dirs[1], theirs)
    stores = [world.files[0], beaten, world.files[2], world.sink]
    agent = Agent(stores, world.state, world.clock, world.events)
    write_cred(world.dirs[0], make_cred(NOW_MS + 9000))
    report = agent.reconcile()
    assert beaten.name not in report.written and beaten.read().valid == theirs
    world.events.put(FileChanged(beaten.path, complete=True))  # the other writer's rename
    agent.step(timeout=0)
    assert all((c := s.read().valid) is not None and c.same_tokens(theirs)
               for s in (world.files[0], world.files[2]))
