"""Several machines, one login, coordinated through a real redis-server (issue 14's fault
matrix): every machine a HOME of its own and a real ``credsync run``; the simulated OAuth
server rotates refresh tokens and revokes the whole family when one is presented twice.

Each run ends with: token requests per rotation 1.00, no invalid_grant, no family revoked,
every machine on the live token, and no token (or plain hash of one) in any key, value or
message Redis saw.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sim.server import OAuthServer
from tests.agentproc import credsync, wait_for
from tests.clusterkit import raw_redis
from tests.clusterworld import Machine, Tap, World, leaked
from tests.redisproc import TcpProxy, running

pytestmark = pytest.mark.integration

LIFETIME_S = 6.0  # a refresh every 4.8 s (80 %)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running(tmp_path / "redis") as redis, \
            OAuthServer(access_lifetime_s=LIFETIME_S) as server:
        w = World(tmp_path, redis, server, LIFETIME_S)
        w.tap = Tap(redis.port)  # every message of the whole run, Redis restarts included
        try:
            yield w
        finally:
            w.tap.close()
            w.stop()


def check_end(world: World, min_rotations: int = 2) -> None:
    world.wait_live(10)
    stats = world.server.stats()
    assert stats.invalid_grants == 0 and stats.revoked_families == 0, (stats, world.logs())
    assert stats.rotations >= min_rotations, (stats, world.logs())
    assert stats.token_requests == stats.rotations, (stats, world.logs())
    tokens = world.server.issued_tokens()
    assert world.tap is not None and world.tap.messages, "the tap heard nothing"
    texts = world.redis_texts() + world.tap.messages
    assert texts, "the scan saw nothing: it would find nothing either"
    assert leaked(texts, tokens) == []


def test_three_machines_no_faults_one_request_per_rotation(world: World) -> None:
    world.add("a")
    world.add("b")
    world.add("c")
    world.launch()  # b and c had no login: they take a's
    world.run_for(10)
    check_end(world)


def claimer(world: World) -> Machine | None:
    """The machine whose claim is the newest in Redis (its member id is in the value)."""
    r = raw_redis(world.redis.port)
    try:
        best: tuple[int, str] | None = None
        for key in r.scan_iter(match="cs:*:claim:*"):
            value = (r.get(key) or b"").decode(errors="replace").split("|")
            if len(value) > 1 and value[1].isdigit() and \
                    (best is None or int(value[1]) > best[0]):
                best = (int(value[1]), value[0])
    finally:
        r.close()
    if best is None:
        return None
    return next((m for m in world.machines if m.member_id() == best[1]), None)


def test_redis_killed_and_restarted_empty_several_times(world: World) -> None:
    a = world.add("a")
    world.add("b")
    world.add("c")
    world.form()
    world.login(a)
    world.server.inject_delay(1.0, count=1000)  # every refresh takes a second
    world.start()
    world.wait_live(10)
    for _ in range(3):
        # 4.5 s apart: past the 3 s quarantine, so that claims happen between the losses
        world.run_for(4.5)
        world.redis.restart_empty()  # kill -9: every key gone, the epoch with it
    world.run_for(8)
    check_end(world)
    epochs = {m.view_epoch() for m in world.machines}
    assert len(epochs) == 1 and "" not in epochs  # every machine followed the new epochs


def test_a_machine_stopped_while_its_request_is_in_flight(world: World) -> None:
    world.add("a")
    world.add("b")
    world.add("c")
    world.launch()
    stopped: list[Machine] = []

    def stop_the_sender() -> None:
        # In the server's handler, before it answers: the claim is in Redis, the request
        # on the wire. The sender sleeps past its token's expiry and its claim's age.
        if not stopped and (m := claimer(world)) is not None:
            stopped.append(m)
            m.pause()
            threading.Timer(10.0, m.resume).start()

    world.server.on_token_request = stop_the_sender
    wait_for(lambda: bool(stopped), 15, "a refresh to stop")
    requests = world.server.stats().token_requests
    world.run_for(6)
    # While the sender sleeps, nobody else sends: its claim is never taken over.
    assert world.server.stats().token_requests == requests
    world.server.on_token_request = None
    world.run_for(8)
    check_end(world)
    assert "published generation" in stopped[0].log()


def test_a_machine_stopped_in_flight_while_redis_loses_every_key(world: World) -> None:
    world.add("a")
    world.add("b")
    world.add("c")
    world.launch()
    stopped: list[Machine] = []

    def stop_the_sender() -> None:
        if not stopped and (m := claimer(world)) is not None:
            stopped.append(m)
            m.pause()

    world.server.on_token_request = stop_the_sender
    wait_for(lambda: bool(stopped), 15, "a refresh to stop")
    world.server.on_token_request = None
    wait_for(lambda: all(str(stopped[0].member_id()) in m.gossip() for m in world.machines
                         if m is not stopped[0]), 5, "the claim gossiped to the others")
    world.redis.restart_empty()  # the claim is gone from Redis; only gossip remembers it
    requests = world.server.stats().token_requests
    world.run_for(7)  # past the token's expiry and the quarantine
    assert world.server.stats().token_requests == requests, world.logs()
    stopped[0].resume()
    world.run_for(8)
    check_end(world)


@pytest.mark.parametrize("skews", [(30.0, -20.0)])
def test_clocks_skewed_by_tens_of_seconds(world: World, skews: tuple[float, float]) -> None:
    world.add("a")
    world.add("b", skew_s=skews[0])
    world.add("c", skew_s=skews[1])
    world.launch()
    world.run_for(11)
    check_end(world)
    offsets = [m.offset_s() for m in world.machines]
    assert offsets[1] is not None and abs(offsets[1] + skews[0]) < 2, offsets
    assert offsets[2] is not None and abs(offsets[2] + skews[1]) < 2, offsets


def test_one_machine_s_link_stalled_then_back_then_cut(world: World) -> None:
    proxy = TcpProxy(world.redis.port)
    try:
        world.add("a")
        world.add("b")
        c = world.add("c", url=proxy.url)
        world.launch()
        proxy.stall()
        wait_for(lambda: c.down_since() is not None, 5, "c to notice its link is down")
        world.run_for(8)  # a and b rotate; c holds, sending nothing
        assert not world.on_live_token([c])
        proxy.resume()
        took = world.wait_live(8, "c caught up after its link came back")
        assert took < 6
        proxy.cut()  # every connection closed at once: reconnected, nothing missed
        world.run_for(6)
        check_end(world)
    finally:
        proxy.close()


def test_redis_down_nobody_refreshes_and_status_says_since_when(world: World,
                                                               tmp_path: Path) -> None:
    notices = tmp_path / "notices"
    script = tmp_path / "notify.py"
    script.write_text("import os, sys\nwith open(sys.argv[1], 'a') as f:\n"
                      "    f.write(os.environ['CREDSYNC_EVENT'] + ' '"
                      " + os.environ['CREDSYNC_URGENCY'] + '\\n')\n")
    world.add("a")
    b = world.add("b", notify={"desktop": False,
                               "command": [sys.executable, str(script), str(notices)]})
    world.launch()
    world.run_for(2)
    world.redis.kill9()
    wait_for(lambda: all(m.down_since() is not None for m in world.machines), 6,
             "both machines to see Redis gone")
    requests = world.server.stats().token_requests
    world.run_for(8)  # past the refresh deadline and the expiry: still nothing sent
    assert world.server.stats().token_requests == requests
    shown = credsync(["status", "--config", str(b.config)], env=b.env)
    assert "offline since" in shown.stdout, shown.stdout
    # 6 s tokens: already inside the last half hour before the CLI's window, so the one
    # notice is the critical one, and it is not repeated
    wait_for(lambda: notices.exists() and notices.read_text() != "", 5, "the notice")
    assert notices.read_text().splitlines() == ["cluster-offline critical"]
    world.redis.start()
    world.run_for(10)
    # the outage came before the first rotation: one after it (reconnect, quarantine, refresh)
    check_end(world, min_rotations=1)


def test_one_shot_refresh_and_token_on_members_go_through_the_cluster(world: World) -> None:
    a = world.add("a")
    b = world.add("b")
    world.form()
    old = world.login(a, expires_in_s=2)  # due
    b.cred_file.write_bytes(a.cred_file.read_bytes())
    done = credsync(["refresh", "--config", str(a.config)], env=a.env)
    assert done.returncode == 0 and done.stdout.startswith("refreshed"), done.stderr
    # b's file still has the old login, whose token a just spent: b takes a's from Redis
    again = credsync(["refresh", "--config", str(b.config)], env=b.env)
    assert again.returncode == 0, again.stderr
    token = credsync(["token", "--config", str(b.config)], env=b.env)
    new = a.credential()
    assert new is not None and not new.same_tokens(old)
    assert token.returncode == 0 and token.stdout.strip() == new.access_token, token.stderr
    stats = world.server.stats()
    assert stats.token_requests == 1 and stats.invalid_grants == 0
    assert leaked(world.redis_texts(), world.server.issued_tokens()) == []


def test_a_member_whose_cluster_key_is_gone_hands_out_its_token_but_never_refreshes_alone(
        world: World) -> None:
    a = world.add("a")
    world.add("b")
    world.form()
    from agent.ledger import scope_dir

    (scope_dir(a.state_dir) / "cluster.key").unlink()
    fresh = world.login(a)  # 6 s tokens: fresh now, due within seconds
    token = credsync(["token", "--config", str(a.config)], env=a.env)
    assert token.returncode == 0 and token.stdout.strip() == fresh.access_token, token.stderr
    world.login(a, expires_in_s=1)
    due = credsync(["refresh", "--config", str(a.config)], env=a.env)
    assert due.returncode != 0 and "cluster cannot be opened" in due.stdout + due.stderr
    assert world.server.stats().token_requests == 0
    run = credsync(["run", "--config", str(a.config)], env=a.env, timeout=30)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and lines and lines[-1].startswith("credsync: ")
    assert "cluster.key" in lines[-1] and "Traceback" not in run.stderr
