"""Cluster members for tests, built straight from their parts (no settings, no keychain)."""

from __future__ import annotations

import queue
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from agent.clock import Clock, SystemClock
from agent.cluster.client import ClusterClient, Tunables
from agent.cluster.envelope import ClusterKeys
from agent.cluster.gossip import Gossip
from agent.cluster.membership import Membership, ViewFile
from agent.cluster.redisio import RedisLink, Timeouts
from agent.cluster.state import StateReader
from agent.cluster.subscriber import Subscriber
from agent.cluster.urls import parse_redis_url
from agent.credential import Credential
from tests.factories import make_cred


class SkewedClock(SystemClock):
    """The system clock, off by ``skew_s`` (a machine whose clock is wrong)."""

    def __init__(self, skew_s: float) -> None:
        self.skew_s = skew_s

    def now(self) -> float:
        return super().now() + self.skew_s


@dataclass
class Login:
    """One cluster: a login id and its key; members made on demand."""

    root: Path
    url: str
    login_id: str = field(default_factory=lambda: secrets.token_hex(8))
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    made: list[ClusterClient] = field(default_factory=list)
    subscribers: list[Subscriber] = field(default_factory=list)

    @property
    def keys(self) -> ClusterKeys:
        return ClusterKeys.from_key(self.key)

    def membership(self, name: str, url: str | None = None) -> Membership:
        return Membership(self.login_id, secrets.token_hex(6), name, url or self.url,
                          self.keys.kid, "file", 0)

    def link(self, url: str | None = None, timeout_s: float = 1.0) -> RedisLink:
        return RedisLink(parse_redis_url(url or self.url, "url"), None,
                         Timeouts(timeout_s, timeout_s))

    def member(self, name: str, *, quarantine_s: float = 0.0, clock: Clock | None = None,
               url: str | None = None, timeout_s: float = 1.0) -> ClusterClient:
        scope = self.root / name
        scope.mkdir(parents=True, exist_ok=True)
        client = ClusterClient(self.link(url, timeout_s), self.keys, self.membership(name, url),
                               Gossip(scope / "cluster-gossip"), ViewFile(scope),
                               clock or SystemClock(), Tunables(quarantine_s=quarantine_s))
        self.made.append(client)
        return client

    def genesis(self, name: str = "a", **kw: Any) -> ClusterClient:
        first = self.member(name, **kw)
        first.ensure_epoch(genesis=True)
        first.sync()
        return first

    def subscriber(self, client: ClusterClient, events: queue.Queue[object], *,
                   url: str | None = None, **kw: Any) -> Subscriber:
        link = self.link(url)
        member = client.member
        sub = Subscriber(lambda: link.subscription(member.channel),
                         StateReader(link, client.keys, member), client.keys, member, events,
                         SystemClock(), **kw)
        self.subscribers.append(sub)
        sub.start()
        return sub

    def close(self) -> None:
        for sub in self.subscribers:
            sub.stop()
        for client in self.made:
            client.close()


def raw_redis(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)


def wait_event(events: queue.Queue[object], kind: type, deadline_s: float = 5.0) -> Any:
    """The next event of ``kind`` (others are dropped), within the deadline."""
    import time

    end = time.monotonic() + deadline_s
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind.__name__} within {deadline_s} s")
        try:
            event = events.get(timeout=left)
        except queue.Empty:
            continue
        if isinstance(event, kind):
            return event


def cred(tag: str = "") -> Credential:
    return make_cred(1_900_000_000_000, tag)
