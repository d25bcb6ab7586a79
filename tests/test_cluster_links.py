"""The subscriber and every network wait, against a real redis-server and a faulty proxy."""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cluster.state import (
    Claimed,
    LinkDown,
    Lost,
    Released,
    Resubscribed,
    StatePublished,
)
from agent.errors import ClusterUnavailable
from tests.clusterkit import Login, cred, raw_redis, wait_event
from tests.redisproc import RedisServer, TcpProxy, running

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


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[TcpProxy]:
    found = TcpProxy(server.port)
    try:
        yield found
    finally:
        found.close()


@pytest.fixture(autouse=True)
def no_leaked_subscriber() -> Iterator[None]:
    yield
    alive = [t.name for t in threading.enumerate() if t.name == "credsync-cluster"]
    assert not alive, f"subscriber threads left running: {alive}"


def test_every_publish_reaches_a_subscriber_well_within_a_second(login: Login) -> None:
    a = login.genesis("a")
    b = login.member("b")
    b.sync()
    events: queue.Queue[object] = queue.Queue()
    login.subscriber(b, events)
    assert wait_event(events, Resubscribed).snapshot.payload is None
    latencies = []
    for i in range(200):
        sent = time.monotonic()
        assert a.publish(cred(str(i)), i + 1, 0, i).version == i + 1
        event = wait_event(events, StatePublished, 2.0)
        latencies.append((time.monotonic() - sent) * 1000)
        assert event.snapshot.version == i + 1 and event.snapshot.gen == i + 1
        b.absorb(event)
    latencies.sort()
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
    print(f"publish to event: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {latencies[-1]:.2f} ms")
    assert p99 < 1000
    assert b.view.max_version == 200


def test_claims_releases_and_losses_are_reported(login: Login) -> None:
    a = login.genesis("a")
    events: queue.Queue[object] = queue.Queue()
    login.subscriber(a, events)
    wait_event(events, Resubscribed)
    held = a.claim("sk-ant-ort01-one", 0)
    claimed = wait_event(events, Claimed)
    assert (claimed.claim_id, claimed.agent, claimed.fence) == (held.claim_id, a.me, held.fence)
    a.release(held)
    assert wait_event(events, Released).claim_id == held.claim_id
    again = a.claim("sk-ant-ort01-one", 0)
    a.lost(again)
    assert wait_event(events, Lost).fence == again.fence


def test_a_redis_restart_is_reported_and_the_state_read_on_resubscribe(
        login: Login, server: RedisServer) -> None:
    a = login.genesis("a")
    events: queue.Queue[object] = queue.Queue()
    login.subscriber(a, events, backoff_s=(0.05, 0.1))
    wait_event(events, Resubscribed)
    server.restart_empty()
    down = wait_event(events, LinkDown, 5)
    back = wait_event(events, Resubscribed, 10)
    assert back.down_since == down.since and back.snapshot.epoch == ""  # every key lost
    synced = a.sync()
    assert synced.new_epoch
    a.publish(cred(), 1, 0, 0)
    assert wait_event(events, StatePublished).snapshot.epoch == synced.epoch


def test_a_half_open_link_is_found_by_the_echo_and_caught_up_on_resume(
        login: Login, proxy: TcpProxy) -> None:
    a = login.genesis("a")
    events: queue.Queue[object] = queue.Queue()
    login.subscriber(a, events, url=proxy.url, backoff_s=(0.05, 0.2))
    wait_event(events, Resubscribed)
    time.sleep(0.1)  # the link idle, as between two refreshes
    proxy.stall()
    stalled_at = time.monotonic()
    a.publish(cred("missed"), 1, 0, 0)  # a's own link is direct; the subscriber's is stalled
    down = wait_event(events, LinkDown, 6)
    found_s = time.monotonic() - stalled_at
    print(f"half-open link found in {found_s:.2f} s")
    assert found_s <= 3.55 and "echo" in down.reason
    proxy.resume()
    back = wait_event(events, Resubscribed, 10)
    assert back.snapshot.version == 1 and back.snapshot.gen == 1  # nothing missed for good


def test_a_cut_link_is_reported_at_once(login: Login, proxy: TcpProxy) -> None:
    a = login.genesis("a")
    events: queue.Queue[object] = queue.Queue()
    login.subscriber(a, events, url=proxy.url, backoff_s=(0.05,))
    wait_event(events, Resubscribed)
    cut_at = time.monotonic()
    proxy.cut()
    wait_event(events, LinkDown, 3)
    assert time.monotonic() - cut_at < 1.0
    wait_event(events, Resubscribed, 5)


def _bounded(call: Any, limit_s: float) -> float:
    start = time.monotonic()
    with pytest.raises(ClusterUnavailable):
        call()
    took = time.monotonic() - start
    assert took < limit_s, f"took {took:.2f} s"
    return took


def test_every_call_is_bounded_by_its_timeout_on_a_stalled_link(
        login: Login, proxy: TcpProxy) -> None:
    login.genesis("a")
    b = login.member("b", url=proxy.url, timeout_s=0.5)
    b.sync()
    proxy.stall()
    # redis-py's own retries would make each of these several seconds (15 s measured at 1 s).
    took = [_bounded(lambda: b.claim("sk-ant-ort01-x", 0), 1.5),
            _bounded(b.state, 1.5), _bounded(b.heartbeat, 1.5)]
    print("stalled calls took " + ", ".join(f"{t:.2f} s" for t in took))


def test_an_unreachable_redis_is_one_error_quickly(login: Login, server: RedisServer) -> None:
    a = login.genesis("a")
    server.stop()
    _bounded(lambda: a.claim("sk-ant-ort01-x", 0), 1.5)
    assert "cannot reach Redis at redis://127.0.0.1" in _message(lambda: a.state())


def _message(call: Any) -> str:
    try:
        call()
    except ClusterUnavailable as exc:
        return str(exc)
    raise AssertionError("no error")


def test_redis_holds_no_token_and_no_plain_token_hash(
        tmp_path: Path, login: Login, server: RedisServer) -> None:
    import base64
    import hashlib

    from agent.cluster.invite import InviteCode, seal_invite

    a = login.genesis("a")
    b = login.member("b")
    b.sync()
    spy = raw_redis(server.port).pubsub()
    spy.psubscribe("*")
    creds = [cred(str(i)) for i in range(4)]
    version = 0
    for i, c in enumerate(creds):
        claim = a.claim(c.refresh_token, version)
        version = a.publish(c, i + 1, claim.fence, version).version
    lost = b.claim(creds[-1].refresh_token, version)
    b.lost(lost)
    a.heartbeat(gen=4, version=version)
    code = InviteCode.new(login.login_id)
    a.link.set_new(a.member.key(f"invite:{code.invite_id}"), seal_invite(code, login.key, a.me),
                   600)
    stored = _everything(raw_redis(server.port))
    messages = b""
    while (m := spy.get_message(timeout=0.2)) is not None:
        if isinstance(m.get("data"), bytes):
            messages += m["data"] + b"\n"
    spy.close()
    assert stored and messages.count(b"S|") == 4
    for text in (stored, messages):
        for c in creds:
            for secret in (c.access_token, c.refresh_token):
                raw = secret.encode()
                for form in (raw, hashlib.sha256(raw).hexdigest().encode(),
                             hashlib.sha256(raw).digest(), base64.b64encode(raw)):
                    assert form not in text
        assert login.key not in text and login.key.hex().encode() not in text
        assert base64.b64encode(login.key) not in text


def _everything(r: Any) -> bytes:
    out = b""
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        out += key + b"\n"
        if kind == b"string":
            out += r.get(key) + b"\n"
        elif kind == b"hash":
            for k, v in r.hgetall(key).items():
                out += k + b"=" + v + b"\n"
        else:
            raise AssertionError(f"unexpected key type {kind!r} for {key!r}")
    return out
