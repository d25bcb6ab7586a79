"""Several machines, one login, coordinated through a real redis-server (issue 14's fault
matrix): every machine a HOME of its own and a real ``credsync run``; the simulated OAuth
server rotates refresh tokens and revokes the whole family when one is presented twice.

Each run ends with: token requests per rotation 1.00, no invalid_grant, no family revoked,
every machine on the live token, and no token (or plain hash of one) in any key, value or
message Redis saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sim.server import OAuthServer
from tests.clusterworld import Tap, World, leaked
from tests.redisproc import running

pytestmark = pytest.mark.integration

LIFETIME_S = 8.0  # a refresh every 6.4 s (80 %)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running(tmp_path / "redis") as redis, \
            OAuthServer(access_lifetime_s=LIFETIME_S) as server:
        w = World(tmp_path, redis, server, LIFETIME_S)
        try:
            yield w
        finally:
            w.stop()


def check_end(world: World, tap: Tap | None = None, min_rotations: int = 2) -> None:
    world.wait_live(10)
    stats = world.server.stats()
    assert stats.invalid_grants == 0 and stats.revoked_families == 0, (stats, world.logs())
    assert stats.rotations >= min_rotations, (stats, world.logs())
    assert stats.token_requests == stats.rotations, (stats, world.logs())
    tokens = world.server.issued_tokens()
    texts = world.redis_texts() + (tap.messages if tap is not None else [])
    assert texts, "the scan saw nothing: it would find nothing either"
    assert leaked(texts, tokens) == []


def test_three_machines_no_faults_one_request_per_rotation(world: World) -> None:
    a = world.add("a")
    world.add("b")
    world.add("c")
    world.form()
    world.login(a)
    tap = Tap(world.redis.port)
    try:
        world.start()
        world.wait_live(10, "the login on a reaching b and c (which had none)")
        world.run_for(20)
        check_end(world, tap)
    finally:
        tap.close()
