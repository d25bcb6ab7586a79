"""The claim protocol against a real redis-server (each test its own server)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cluster.client import ClaimKind, PublishKind
from agent.cluster.state import Claimed
from tests.clusterkit import Login, cred, raw_redis
from tests.redisproc import REPO_ROOT, RedisServer, running

pytestmark = pytest.mark.integration


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


TOKEN = "sk-ant-ort01-protocol-test-0123456789abcdef"


def test_six_processes_race_for_every_token_and_exactly_one_wins_each(
        tmp_path: Path, login: Login) -> None:
    login.genesis("seed")
    tokens = [f"sk-ant-ort01-race-{i:04d}-{'x' * 20}" for i in range(300)]
    (tmp_path / "tokens").write_text("\n".join(tokens))
    racers = [subprocess.Popen(
        [sys.executable, "-m", "tests.cluster_racer", str(tmp_path), login.url, login.login_id,
         login.key.hex(), f"racer{i}"], cwd=REPO_ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    outs = [r.communicate("go\n", timeout=120) for r in racers]
    assert all(r.returncode == 0 for r in racers), [err for _, err in outs]
    results = [json.loads(out) for out, _ in outs]
    winners: dict[str, int] = {}
    for result in results:
        for token, fence in result["won"].items():
            assert token not in winners, f"{token} won twice"
            winners[token] = fence
    assert sorted(winners) == sorted(tokens)
    assert len(set(winners.values())) == len(tokens)  # every claim its own fence
    assert sum(r["kinds"].get("taken", 0) for r in results) == 5 * len(tokens)


def test_publish_is_a_cas_on_the_version_and_fenced_against_older_claims(login: Login) -> None:
    a = login.genesis("a")
    b = login.member("b")
    b.sync()
    first, second = cred("first"), cred("second")
    assert a.publish(first, 1, 0, 0).kind is PublishKind.OK
    assert b.publish(second, 1, 0, 0).kind is PublishKind.STALE  # b saw version 0
    snap = b.state()
    assert snap.version == 1 and snap.gen == 1 and snap.credential is not None
    assert snap.credential.same_tokens(first) and snap.payload is not None
    assert snap.payload.by == a.me
    old = a.claim(first.refresh_token, 1)
    new = b.claim(TOKEN, 1)
    assert old.ok and new.ok and new.fence > old.fence
    assert b.publish(second, 2, new.fence, 1).version == 2
    late = a.publish(cred("late"), 2, old.fence, 2)
    assert late.kind is PublishKind.FENCED  # an older claim's late answer never overwrites
    assert a.publish(cred("forged"), 3, new.fence + 10, 2).kind is PublishKind.FENCED


def test_a_claim_on_a_stale_version_is_refused(login: Login) -> None:
    a = login.genesis("a")
    a.publish(cred(), 1, 0, 0)
    result = a.claim(TOKEN, 0)
    assert result.kind is ClaimKind.STALE and result.version == 1
    assert a.claim(TOKEN, 1).ok


def test_only_the_holder_releases_and_a_lost_claim_is_kept_for_good(login: Login) -> None:
    a, b = login.genesis("a"), login.member("b")
    b.sync()
    held = a.claim(TOKEN, 0)
    assert held.ok
    taken = b.claim(TOKEN, 0)
    assert taken.kind is ClaimKind.TAKEN and taken.holder == a.me and not taken.lost
    forged = type(held)(ClaimKind.OK, held.claim_id, fence=held.fence)
    assert not b.release(forged)  # b is not the holder
    assert b.claim(TOKEN, 0).kind is ClaimKind.TAKEN
    assert a.release(held)
    again = b.claim(TOKEN, 0)
    assert again.ok and again.fence > held.fence
    assert b.lost(again)
    assert not b.release(again)  # lost: the token may be spent, never claimable again
    lost = a.claim(TOKEN, 0)
    assert lost.kind is ClaimKind.TAKEN and lost.lost and lost.holder == b.me
    assert b.claim(TOKEN, 0).kind is ClaimKind.TAKEN  # not even by its own holder


def test_a_member_takes_up_its_own_unanswered_claim(login: Login) -> None:
    a = login.genesis("a")
    first = a.claim(TOKEN, 0)
    again = a.claim(TOKEN, 0)  # its answer was lost in a timeout; the token was never sent
    assert again.ok and again.fence > first.fence  # a fresh fence: never an older one
    assert a.publish(cred(), 1, again.fence, 0).kind is PublishKind.OK


def test_data_loss_gives_a_new_epoch_and_a_quarantine_on_redis_time(
        login: Login, server: RedisServer) -> None:
    a = login.genesis("a", quarantine_s=3600)
    assert a.claim("sk-ant-ort01-before", 0).ok  # the genesis epoch has no quarantine
    server.restart_empty()
    assert a.claim(TOKEN, 0).kind is ClaimKind.EPOCH
    synced = a.sync()
    assert synced.new_epoch and not synced.rolled_back and synced.reseeded == 1
    result = a.claim(TOKEN, 0)
    assert result.kind is ClaimKind.QUARANTINE and 3590 < result.retry_after_s <= 3600
    with raw_redis(server.port) as r:
        assert int(r.get(a.member.key("fence"))) >= 1  # lifted past every fence seen


def test_gossip_reseeds_a_claim_that_redis_forgot(login: Login, server: RedisServer) -> None:
    a, b = login.genesis("a"), login.member("b")
    b.sync()
    held = a.claim(TOKEN, 0)
    b.absorb(Claimed(held.claim_id, a.me, held.fence))  # what b's subscriber would report
    server.restart_empty()  # a is paused (SIGSTOP) with the token on the wire
    synced = b.sync()
    assert synced.new_epoch and synced.reseeded == 1
    c = login.member("c")
    c.sync()
    taken = c.claim(TOKEN, 0)
    assert taken.kind is ClaimKind.TAKEN and taken.holder == a.me and taken.fence == held.fence
    a.sync()
    assert a.release(held)  # the original holder can still give back a token it never sent


def test_a_holder_claims_its_reseeded_token_again_under_a_fresh_fence(
        login: Login, server: RedisServer) -> None:
    a = login.genesis("a")
    held = a.claim(TOKEN, 0)
    a.publish(cred(), 1, held.fence, 0)
    server.restart_empty()
    a.sync()  # re-seeded from a's own gossip: a|fence|0|reseed
    snapshot = a.state()
    again = a.claim(TOKEN, snapshot.version)
    assert again.ok and again.fence > held.fence
    assert a.seed(cred("back"), 1, snapshot).kind is PublishKind.OK


def test_without_gossip_the_forgotten_token_is_claimed_again(
        login: Login, server: RedisServer) -> None:
    """The control (T4'): what gossip prevents. The second claim would revoke the family."""
    a, c = login.genesis("a"), login.member("c")
    assert a.claim(TOKEN, 0).ok
    server.restart_empty()
    c.sync()
    assert c.claim(TOKEN, 0).ok


def test_a_rollback_without_restart_is_detected_and_given_a_new_epoch(
        login: Login, server: RedisServer) -> None:
    a = login.genesis("a")
    for i in range(3):
        claim = a.claim(f"sk-ant-ort01-{i}", i)
        assert a.publish(cred(str(i)), i + 1, claim.fence, i).kind is PublishKind.OK
    epoch = a.view.epoch
    with raw_redis(server.port) as r:  # a failover to a replica that missed the last writes
        r.set(a.member.key("fence"), 1)
        r.hset(a.member.key("state"), "v", 1)
    synced = a.sync()
    assert synced.rolled_back and synced.new_epoch and synced.epoch != epoch
    assert synced.snapshot.payload is None  # written under the old epoch: republish
    assert a.claim(TOKEN, synced.snapshot.version).fence > 3  # fences never go back


def test_a_replayed_or_altered_state_does_not_open(login: Login, server: RedisServer) -> None:
    a = login.genesis("a")
    a.publish(cred("one"), 1, 0, 0)
    key = a.member.key("state")
    with raw_redis(server.port) as r:
        old_blob = r.hget(key, "blob")
        a.publish(cred("two"), 2, 0, 1)
        r.hset(key, "blob", old_blob)  # replay version 1's envelope as version 2
        replayed = a.state()
        assert replayed.payload is None and "does not open" in replayed.problem
        kid, _, body = old_blob.decode().partition(".")
        r.hset(key, mapping={"v": 1, "blob": f"{kid}.{body[:-6]}AAAA=="})
        assert a.state().payload is None
        r.hset(key, mapping={"v": 1, "blob": old_blob, "fence": 5})  # another fence: AAD
        assert a.state().payload is None
        r.hset(key, mapping={"fence": 0})
        assert a.state().gen == 1  # the original binding opens


def test_another_logins_envelope_does_not_open(tmp_path: Path, login: Login) -> None:
    a = login.genesis("a")
    a.publish(cred(), 1, 0, 0)
    other = Login(tmp_path / "other", login.url, login_id=login.login_id)  # same id, new key
    try:
        spy = other.member("spy")
        snap = spy.state()
        assert snap.payload is None and "sealed under key" in snap.problem
    finally:
        other.close()


def test_heartbeats_measure_the_clock_offset_to_redis(login: Login) -> None:
    from tests.clusterkit import SkewedClock

    fast = login.member("fast", clock=SkewedClock(30.0))
    slow = login.member("slow", clock=SkewedClock(-20.0))
    for m in (fast, slow):
        m.sync()
    assert abs(fast.heartbeat(gen=3, version=2).offset_s + 30.0) < 0.5
    assert abs(slow.heartbeat(propagation_ms=4.2).offset_s - 20.0) < 0.5
    members = {m.name: m for m in fast.members()}
    assert set(members) == {"fast", "slow"}
    assert members["fast"].gen == 3 and members["slow"].propagation_ms == 4.2
    assert all(0 <= m.age_s < 5 for m in members.values())
    slow.forget_member()
    assert [m.name for m in fast.members()] == ["fast"]
