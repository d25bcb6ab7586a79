"""The cluster node and the refresh coordinator together, in one process against a real
redis-server: each "machine" a config dir, a state dir, a ClusterNode and a Coordinator, with a
fake clock (Redis keeps its own) and one shared refresher that redeems a token once only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.cluster.node import ClusterNode
from agent.config import RefreshSection
from agent.credential import Credential
from agent.ledger import Ledger
from agent.reconcile import Reconciler
from agent.refresh.coordinator import Coordinator, Kind
from agent.refresh.peers import Claim, Hold
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.cluster import ClusterStore
from tests.clusterkit import Login, raw_redis
from tests.factories import make_cred, write_cred
from tests.redisproc import RedisServer, running
from tests.test_refresh import ScriptedRefresher

pytestmark = pytest.mark.integration

LIFETIME_S = 8 * 3600.0


@dataclass
class Box:
    """One machine."""

    name: str
    dir: Path
    node: ClusterNode
    coord: Coordinator
    clock: FakeClock

    @property
    def file(self) -> ClaudeFileStore:
        store = self.coord.stores[0]
        assert isinstance(store, ClaudeFileStore)
        return store

    def login(self) -> Credential | None:
        return self.file.read().valid


class Pausing:
    """The real node, except that the machine stalls right after its claim (a GC pause, a
    SIGSTOP): the fake clock moves on before the request would go."""

    def __init__(self, node: ClusterNode, clock: FakeClock, pause_s: float) -> None:
        self.node = node
        self.clock = clock
        self.pause_s = pause_s

    def __getattr__(self, name: str) -> object:
        return getattr(self.node, name)

    def claim(self, cred: Credential) -> Claim | Hold:
        got = self.node.claim(cred)
        self.clock.advance(self.pause_s)
        return got


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with running(tmp_path / "redis") as found:
        yield found


@pytest.fixture
def login(tmp_path: Path, server: RedisServer) -> Iterator[Login]:
    found = Login(tmp_path / "members", server.url)
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
def refresher() -> ScriptedRefresher:
    return ScriptedRefresher(FakeClock(time.time()), LIFETIME_S)


def box(tmp_path: Path, login: Login, refresher: ScriptedRefresher, name: str,
        fallback: str = "never", genesis: bool = False) -> Box:
    clock = FakeClock(time.time())
    refresher.clock = clock
    client = login.genesis(name, clock=clock) if genesis else login.member(name, clock=clock)
    if not genesis:
        client.sync()
    ledger = Ledger(tmp_path / name / "state", [tmp_path / name / "cfg"])
    ledger.ensure()
    node = ClusterNode(client, clock, ledger.journal, ledger.path, heartbeat_s=30,
                       claim_valid_s=3, fallback=fallback)
    cfg = tmp_path / name / "cfg"
    cfg.mkdir(parents=True)
    stores = [ClaudeFileStore(cfg), ClusterStore(node)]
    coord = Coordinator(RefreshSection(jitter=0), Reconciler(stores, ledger, clock), [cfg],
                        refresher, clock, lock_wait_s=1, cli_lock_wait_s=0.5, peers=node)
    node.start()
    return Box(name, cfg, node, coord, clock)


def due_login(at: float) -> Credential:
    """A login inside its refresh window (80 % of 8 h gone)."""
    return make_cred(int((at + 600) * 1000))


def test_a_login_made_here_is_published_and_reaches_the_other_machine(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    b = box(tmp_path, login, refresher, "b")
    fresh = make_cred(int((a.clock.now() + LIFETIME_S) * 1000))
    write_cred(a.dir, fresh)
    a.coord.writer.round()  # the winner goes to every store, the cluster's among them
    assert a.node.held is not None and a.node.held.gen == 1
    b.node.check()
    b.coord.writer.round()
    got = b.login()
    assert got is not None and got.access_token == fresh.access_token
    assert b.node.held is not None and b.node.held.gen == 1


def test_one_refresh_for_two_machines_and_the_other_adopts(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    b = box(tmp_path, login, refresher, "b")
    old = due_login(a.clock.now())
    write_cred(a.dir, old)
    a.coord.writer.round()
    b.node.check()
    b.coord.writer.round()
    first = a.coord.run(old)
    assert first.kind is Kind.REFRESHED
    second = b.coord.run(old)  # b decided on the old login: it takes a's instead
    assert second.kind is Kind.ADOPTED and second.credential is not None
    assert second.credential.access_token == first.credential.access_token  # type: ignore
    assert refresher.sent == [old.refresh_token]
    # a's old token is spent on b too: b's journal says so, so b can never send it
    assert b.coord.journal.was_sent(old.refresh_token)


def test_a_token_another_machine_claimed_is_not_sent_until_its_state_comes(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    b = box(tmp_path, login, refresher, "b")
    old = due_login(a.clock.now())
    write_cred(a.dir, old)
    write_cred(b.dir, old)
    a.coord.writer.round()
    b.coord.writer.round()
    taken = a.node.client.claim(old.refresh_token, a.node.client.state().version)
    assert taken.ok
    held = b.coord.run(old)
    assert held.kind is Kind.HELD and "is refreshing" in held.message
    assert refresher.sent == [] and not b.coord.journal.was_sent(old.refresh_token)
    # a's answer arrives and is published: b adopts it on its next try
    new = make_cred(int((a.clock.now() + LIFETIME_S) * 1000))
    a.node.sent(Claim(taken, a.clock.monotonic()), new, LIFETIME_S)
    again = b.coord.run(old)
    assert again.kind is Kind.ADOPTED and refresher.sent == []
    got = b.login()
    assert got is not None and got.access_token == new.access_token


def test_a_claim_whose_holder_lost_the_answer_means_a_relogin(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    b = box(tmp_path, login, refresher, "b")
    old = due_login(a.clock.now())
    write_cred(b.dir, old)
    b.coord.writer.round()
    taken = a.node.client.claim(old.refresh_token, a.node.client.state().version)
    assert taken.ok
    a.node.client.lost(taken)
    outcome = b.coord.run(old)
    assert outcome.kind is Kind.RELOGIN and refresher.sent == []


def test_a_claim_held_too_long_before_sending_is_given_back(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    old = due_login(a.clock.now())
    write_cred(a.dir, old)
    a.coord.writer.round()
    a.coord.peers = Pausing(a.node, a.clock, 5.0)  # type: ignore[assignment]
    outcome = a.coord.run(old)
    assert outcome.kind is Kind.HELD and refresher.sent == []
    assert not a.coord.journal.was_sent(old.refresh_token)
    r = raw_redis(login_port(login))
    assert list(r.scan_iter(match="cs:*:claim:*")) == []  # released in Redis too
    a.coord.peers = a.node
    assert a.coord.run(old).kind is Kind.REFRESHED and refresher.sent == [old.refresh_token]


def login_port(login: Login) -> int:
    return int(login.url.rsplit(":", 1)[1].split("/")[0])


def test_redis_down_and_another_member_known_nobody_refreshes(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher,
        server: RedisServer) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    box(tmp_path, login, refresher, "b")
    old = due_login(a.clock.now())
    write_cred(a.dir, old)
    a.coord.writer.round()
    a.node.due(a.clock.now() + 31)  # a heartbeat: a learns of b
    assert len(a.node.others()) == 1
    server.kill9()
    outcome = a.coord.run(old)
    assert outcome.kind is Kind.HELD and "cannot be reached" in outcome.message
    assert refresher.sent == []
    assert a.login() is not None and a.login().same_tokens(old)  # type: ignore[union-attr]


def test_alone_in_the_cluster_a_machine_refreshes_without_redis_and_publishes_later(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher,
        server: RedisServer) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    old = due_login(a.clock.now())
    write_cred(a.dir, old)
    a.coord.writer.round()
    server.kill9()
    outcome = a.coord.run(old)
    assert outcome.kind is Kind.REFRESHED and refresher.sent == [old.refresh_token]
    assert a.node.held is not None and a.node.held.credential.same_tokens(outcome.credential)
    server.start()  # back, empty: the generation held is published again
    a.node.need_sync, a.node._next_try = True, 0.0
    a.node.due(a.clock.now())
    state = a.node.client.state()
    assert state.credential is not None and outcome.credential is not None
    assert state.credential.access_token == outcome.credential.access_token


def test_fallback_solo_refreshes_after_a_long_outage_when_nobody_else_was_seen(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher,
        server: RedisServer) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True, fallback="solo")
    old = due_login(a.clock.now())
    write_cred(a.dir, old)
    a.coord.writer.round()
    # Another member last seen two days ago; Redis down for 11 minutes.
    a.node.live.members.append({"member_id": "0123456789ab", "name": "old",
                                "seen_ms": (a.clock.now() - 2 * 86400) * 1000})
    server.kill9()
    assert a.coord.run(old).kind is Kind.HELD  # just gone: wait
    a.clock.advance(11 * 60)
    assert a.coord.run(old).kind is Kind.REFRESHED


def test_never_publishes_a_login_another_machine_claimed(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    b = box(tmp_path, login, refresher, "b")
    old = due_login(a.clock.now())
    taken = a.node.client.claim(old.refresh_token, 0)
    assert taken.ok
    # b hears of the claim (gossip) and then finds the spent login in its own file
    b.node.client.gossip.claimed(taken.claim_id, a.node.client.me, taken.fence, 0)
    write_cred(b.dir, old)
    b.coord.writer.round()
    state = b.node.client.state()
    assert state.credential is None  # never handed around


def test_an_adopted_login_s_expiry_is_put_on_this_machine_s_clock(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    b = box(tmp_path, login, refresher, "b")
    b.clock.jump(30)  # b's clock is 30 s fast
    b.node.due(b.clock.now() + 31)  # a heartbeat measures the offset
    assert b.node.live.offset_s is not None and abs(b.node.live.offset_s + 30) < 2
    old = due_login(a.clock.now())
    write_cred(a.dir, old)
    a.coord.writer.round()
    refresher.clock = a.clock  # the server answers a on a's clock
    a.coord.run(old, force=True)
    b.node.check()
    held = b.node.held
    assert held is not None and a.node.held is not None
    # 8 h from the refresh, on b's clock: 30 s later than a's figure
    assert abs(held.credential.expires_at - a.node.held.credential.expires_at - 30) < 2


def test_a_claim_nobody_answers_for_five_minutes_is_a_relogin(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    b = box(tmp_path, login, refresher, "b")
    old = due_login(a.clock.now())
    write_cred(b.dir, old)
    b.coord.writer.round()
    taken = a.node.client.claim(old.refresh_token, a.node.client.state().version)
    assert taken.ok  # and a is never heard of again
    assert b.coord.run(old).kind is Kind.HELD
    b.clock.advance(301)
    outcome = b.coord.run(old)
    assert outcome.kind is Kind.RELOGIN and "never answered" in outcome.message
    assert refresher.sent == []


def test_a_restarted_holder_that_never_saw_its_answer_marks_the_claim_lost(
        tmp_path: Path, login: Login, refresher: ScriptedRefresher) -> None:
    a = box(tmp_path, login, refresher, "a", genesis=True)
    b = box(tmp_path, login, refresher, "b")
    old = due_login(a.clock.now())
    write_cred(a.dir, old)
    write_cred(b.dir, old)
    a.coord.writer.round()
    b.coord.writer.round()
    # a claimed, journalled and sent; then it was killed before the answer
    a.coord.journal.record(old.refresh_token, a.clock.now())
    assert a.node.client.claim(old.refresh_token, a.node.client.state().version).ok
    assert a.coord.run(old).kind is Kind.RELOGIN  # the restarted a: sent before, answer unknown
    outcome = b.coord.run(old)
    assert outcome.kind is Kind.RELOGIN and "lost the answer" in outcome.message
    assert refresher.sent == []
