"""What Redis holds of the login, read at one moment, and what the subscriber reports.

The events are plain values: the subscriber thread only puts them on the agent's queue, and
the agent's loop (which owns every side effect) acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.cluster.envelope import Binding, ClusterKeys, EnvelopeError, Payload, open_state
from agent.cluster.membership import Membership
from agent.cluster.redisio import RedisLink
from agent.credential import Credential


@dataclass(frozen=True)
class Snapshot:
    """``payload`` is None when Redis holds no state yet, or when it does not open
    (``problem`` says why: never adopt it)."""

    epoch: str
    version: int
    fence: int
    payload: Payload | None = None
    problem: str = ""

    @property
    def gen(self) -> int:
        return self.payload.gen if self.payload is not None else 0

    @property
    def credential(self) -> Credential | None:
        return self.payload.credential if self.payload is not None else None


def number(raw: bytes | str | None) -> int:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "0")
    return int(text) if text.isdigit() else 0


def open_snapshot(keys: ClusterKeys, member: Membership, epoch: str, version: int, fence: int,
                  blob: str) -> Snapshot:
    binding = Binding(member.login_id, keys.kid, epoch, version, fence)
    try:
        return Snapshot(epoch, version, fence, open_state(keys, binding, blob))
    except EnvelopeError as exc:
        return Snapshot(epoch, version, fence, None, str(exc))


class StateReader:
    """``GET epoch`` and ``HGETALL state``, the envelope opened and checked. Reads only: the
    subscriber thread runs it on every (re)subscribe."""

    def __init__(self, link: RedisLink, keys: ClusterKeys, member: Membership) -> None:
        self.link = link
        self.keys = keys
        self.member = member

    def read(self) -> Snapshot:
        epoch = (self.link.get(self.member.key("epoch")) or b"").decode(errors="replace")
        state = self.link.hash(self.member.key("state"))
        version, fence = number(state.get("v")), number(state.get("fence"))
        blob = state.get("blob")
        if blob is None:
            return Snapshot(epoch, version, fence)
        if state.get("epoch", b"").decode(errors="replace") != epoch:
            # Written under an epoch that has since been replaced: it would not open anyway.
            return Snapshot(epoch, version, fence, None, "the state predates the current epoch")
        return open_snapshot(self.keys, self.member, epoch, version, fence,
                             blob.decode(errors="replace"))


# ----- what the subscriber reports -----------------------------------------------------------

@dataclass(frozen=True)
class StatePublished:
    """A member published a state (``S``); ``snapshot.problem`` set when it does not open."""

    snapshot: Snapshot
    received_at: float


@dataclass(frozen=True)
class Resubscribed:
    """The subscription is (again) confirmed, and this is the state read right after: what
    was published while the link was down is not lost (pub/sub is at most once). The loop
    should run ``ClusterClient.sync()`` (the epoch check) on it."""

    snapshot: Snapshot
    at: float
    down_since: float | None


@dataclass(frozen=True)
class Claimed:
    claim_id: str
    agent: str
    fence: int


@dataclass(frozen=True)
class Released:
    claim_id: str
    agent: str
    fence: int


@dataclass(frozen=True)
class Lost:
    """A member marked its claim lost: the token may be spent, the login needs a re-login
    unless a fresher state comes."""

    claim_id: str
    agent: str
    fence: int


@dataclass(frozen=True)
class LinkDown:
    """The subscription failed (once per outage; ``since`` is when it was first noticed)."""

    since: float
    reason: str


ClusterEvent = StatePublished | Resubscribed | Claimed | Released | Lost | LinkDown
