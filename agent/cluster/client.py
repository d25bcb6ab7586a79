"""One member's side of the protocol, called from the agent's loop (never from a thread).

The guarantee carried across machines is the local one: a refresh token is sent at most once,
by anyone, ever. A lease cannot give it (a paused holder outlives its lease, measured), so the
claim is on the token itself: ``HMAC(K_claim, refresh_token)`` created once (CLAIM), never taken
over by expiry, released only by its holder when the token was certainly not sent. Before the
claim reaches Redis it is in this member's gossip file (fsynced), and every member records the
claims it hears of, so that a Redis that lost every key is re-seeded (``sync``) before the
quarantine lets anyone claim again.

Order for a refresh, inside the existing local locks (the lead's coordinator):
``sync`` if the epoch is unknown; journal line; ``claim``; send; ``publish`` the answer (or
``release`` when it was certainly not sent, ``lost`` when it may have been).
"""

from __future__ import annotations

import enum
import json
import secrets
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock
from agent.cluster.envelope import Binding, ClusterKeys, Payload, seal_state
from agent.cluster.gossip import Gossip
from agent.cluster.membership import Membership, View, ViewFile
from agent.cluster.redisio import RedisLink
from agent.cluster.state import (
    Claimed,
    Lost,
    Released,
    Resubscribed,
    Snapshot,
    StatePublished,
    StateReader,
    number,
)
from agent.credential import Credential
from agent.errors import ClusterError

CLAIM_TTL_S = 30 * 86400.0  # at least a refresh token's life: a claim is never reclaimable
EPOCH_HEX_BYTES = 12


@dataclass(frozen=True)
class Tunables:
    quarantine_s: float = 45.0  # 2 * refresh timeout + 5: every member re-seeds first
    claim_ttl_s: float = CLAIM_TTL_S


class ClaimKind(str, enum.Enum):
    OK = "ok"  # this member holds the claim: send the token
    TAKEN = "taken"  # another member holds it: wait for its state (or its release)
    STALE = "stale"  # the cluster state moved on: adopt it, send nothing
    QUARANTINE = "quarantine"  # Redis lost its data recently: wait ``retry_after_s``
    EPOCH = "epoch"  # the epoch changed: ``sync()``, then decide again

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ClaimResult:
    kind: ClaimKind
    claim_id: str
    fence: int = 0
    holder: str = ""  # TAKEN: the member holding it
    lost: bool = False  # TAKEN: its holder marked the answer lost (a re-login is needed)
    version: int = 0  # STALE: the version Redis has
    retry_after_s: float = 0.0  # QUARANTINE

    @property
    def ok(self) -> bool:
        return self.kind is ClaimKind.OK


class PublishKind(str, enum.Enum):
    OK = "ok"
    STALE = "stale"  # someone published first: compare gens, adopt or publish again
    FENCED = "fenced"  # an older claim's late answer: never overwrites a newer state
    EPOCH = "epoch"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PublishResult:
    kind: PublishKind
    version: int  # OK: the new version; STALE: Redis' version; FENCED: the state's fence


@dataclass(frozen=True)
class SyncResult:
    epoch: str
    new_epoch: bool  # Redis lost its data or rolled back: re-seeded; republish if fresher
    rolled_back: bool
    reseeded: int
    snapshot: Snapshot


@dataclass(frozen=True)
class Heartbeat:
    redis_ms: int
    offset_s: float  # Redis TIME minus this machine's clock
    rtt_s: float


@dataclass(frozen=True)
class MemberInfo:
    member_id: str
    name: str
    seen_ms: int
    age_s: float  # since the last heartbeat, on Redis' clock
    offset_s: float
    gen: int
    version: int
    propagation_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "name": self.name, "seen_ms": self.seen_ms,
                "age_s": round(self.age_s, 3), "offset_s": round(self.offset_s, 3),
                "gen": self.gen, "version": self.version, "propagation_ms": self.propagation_ms}


def _holder(text: str) -> tuple[str, int, bool]:
    parts = text.split("|")
    fence = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return parts[0], fence, parts[-1] == "lost"


class ClusterClient:
    def __init__(self, link: RedisLink, keys: ClusterKeys, member: Membership, gossip: Gossip,
                 views: ViewFile, clock: Clock, tunables: Tunables | None = None) -> None:
        self.link = link
        self.keys = keys
        self.member = member
        self.gossip = gossip
        self.views = views
        self.clock = clock
        self.tunables = tunables or Tunables()
        self.view: View = views.load()
        self.reader = StateReader(link, keys, member)

    @property
    def me(self) -> str:
        return self.member.member_id

    def _key(self, name: str) -> str:
        return self.member.key(name)

    def _see(self, fence: int = 0, version: int = 0, save: bool = True) -> None:
        self.view.max_fence = max(self.view.max_fence, fence)
        self.view.max_version = max(self.view.max_version, version)
        if save:
            self.views.save(self.view)

    def save_view(self) -> None:
        self.views.save(self.view)

    # ----- reading -----------------------------------------------------------------------
    def state(self) -> Snapshot:
        snapshot = self.reader.read()
        if snapshot.epoch == self.view.epoch:
            self._see(snapshot.fence, snapshot.version)
        return snapshot

    # ----- the epoch check ---------------------------------------------------------------
    def ensure_epoch(self, genesis: bool = False) -> tuple[str, bool]:
        reply = self.link.run("ensure_epoch", [self._key("epoch")],
                              [secrets.token_hex(EPOCH_HEX_BYTES), "g" if genesis else ""])
        return str(reply[0]), bool(reply[1])

    def sync(self) -> SyncResult:
        """Run on start, on every (re)subscribe and on an EPOCH answer. A Redis that lost every
        key gets a new epoch (its quarantine runs on Redis' clock); one that kept the epoch but
        went back (a failover to a replica that missed writes) is given a new one here. Either
        way: fences are lifted past any seen, and every claim this member knows is re-seeded."""
        known = self.view.epoch
        epoch, _ = self.ensure_epoch()
        state = self.link.hash(self._key("state"))
        counter = number(self.link.get(self._key("fence")))
        version = number(state.get("v"))
        rolled_back = epoch == known and (counter < self.view.max_fence
                                                    or version < self.view.max_version)
        if rolled_back:
            reply = self.link.run("rotate_epoch", [self._key("epoch")],
                                  [epoch, secrets.token_hex(EPOCH_HEX_BYTES)])
            epoch = str(reply[0])
        new_epoch = epoch != known
        reseeded = 0
        if new_epoch:
            reseeded = self._reseed()
            self.view = View(epoch, self.view.max_fence, 0)
            self.views.save(self.view)
        snapshot = self.state()
        # A member that never saw an epoch (just joined) has nothing to republish.
        return SyncResult(epoch, new_epoch and bool(known), rolled_back, reseeded, snapshot)

    def _reseed(self) -> int:
        self.link.run("lift_fence", [self._key("fence")], [self.view.max_fence])
        claims = self.gossip.claims()
        if not claims:
            return 0
        ttl_ms = int(self.tunables.claim_ttl_s * 1000)
        keys = [self._key(f"claim:{c.claim_id}") for c in claims]
        return int(self.link.run("reseed", keys, [ttl_ms, *(c.reseed_value() for c in claims)]))

    # ----- claims ------------------------------------------------------------------------
    def claim(self, refresh_token: str, seen_version: int) -> ClaimResult:
        """Claim the right to send ``refresh_token``; ``seen_version`` is the state version the
        caller decided on (STALE when Redis has moved on). The caller has journalled the
        token first. A ClusterUnavailable here leaves the outcome unknown: do not send."""
        claim_id = self.keys.claim_id(refresh_token)
        self.gossip.claimed(claim_id, self.me, 0, self.clock.now())
        reply = self.link.run(
            "claim",
            [self._key("epoch"), self._key("state"), self._key("fence"),
             self._key(f"claim:{claim_id}")],
            [self.view.epoch, int(self.tunables.quarantine_s * 1000), seen_version, self.me,
             int(self.tunables.claim_ttl_s * 1000), self.member.channel, claim_id])
        kind, value, holder = str(reply[0]), int(reply[1]), str(reply[2])
        if kind in ("OK", "MINE"):
            # MINE: a claim this member made whose answer it never saw (a timeout): it never
            # sent the token (its journal line was freed), so taking it up again is safe.
            self.gossip.claimed(claim_id, self.me, value, self.clock.now())
            self._see(fence=value)
            return ClaimResult(ClaimKind.OK, claim_id, fence=value)
        if kind == "TAKEN":
            agent, fence, lost = _holder(holder)
            self._record(claim_id, agent, fence, lost)
            return ClaimResult(ClaimKind.TAKEN, claim_id, fence=fence, holder=agent, lost=lost)
        self.gossip.released(claim_id, self.me)
        if kind == "STALE":
            return ClaimResult(ClaimKind.STALE, claim_id, version=value)
        if kind == "QUARANTINE":
            return ClaimResult(ClaimKind.QUARANTINE, claim_id, retry_after_s=value / 1000)
        return ClaimResult(ClaimKind.EPOCH, claim_id)

    def _record(self, claim_id: str, agent: str, fence: int, lost: bool) -> None:
        if lost:
            self.gossip.lost(claim_id, agent, fence)
        else:
            self.gossip.claimed(claim_id, agent, fence, self.clock.now())
        self._see(fence=fence)

    def release(self, claim: ClaimResult) -> bool:
        """Give the claim back: only when the token was certainly not sent (never connected,
        or held past ``claim_valid_s`` before sending). Only the holder's own claim goes."""
        done = self._holder_script(claim, "R")
        if done:
            self.gossip.released(claim.claim_id, self.me)
        return done

    def lost(self, claim: ClaimResult) -> bool:
        """The answer was lost (timeout, dropped, garbage, refused): keep the claim for good,
        marked lost, and tell everyone: a re-login is required unless a fresher state comes."""
        self.gossip.lost(claim.claim_id, self.me, claim.fence)
        return self._holder_script(claim, "L")

    def _holder_script(self, claim: ClaimResult, mark: str) -> bool:
        prefix = f"{self.me}|{claim.fence}|"
        reply = self.link.run("holder", [self._key(f"claim:{claim.claim_id}")],
                              [prefix, self.member.channel, claim.claim_id, mark])
        return bool(reply)

    # ----- state -------------------------------------------------------------------------
    def publish(self, credential: Credential, gen: int, fence: int, expected_version: int,
                expires_in: float | None = None, prev_claim: str = "") -> PublishResult:
        """Make ``credential`` (generation ``gen``) the cluster's state, if Redis still holds
        ``expected_version`` and ``fence`` is not older than the state's."""
        if credential.is_blank:
            raise ClusterError("refusing to publish a blank credential")
        version = expected_version + 1
        payload = Payload(credential, gen, self.link.time_ms(), expires_in, self.me, prev_claim)
        blob = seal_state(self.keys, Binding(self.member.login_id, self.keys.kid,
                                             self.view.epoch, version, fence), payload)
        reply = self.link.run(
            "publish", [self._key("epoch"), self._key("state"), self._key("fence")],
            [self.view.epoch, expected_version, fence, blob, self.member.channel])
        kind, value = PublishKind(str(reply[0]).lower()), int(reply[1])
        if kind is PublishKind.OK:
            self._see(fence=fence, version=value)
        return PublishResult(kind, value)

    def seed(self, credential: Credential, gen: int, snapshot: Snapshot,
             expires_in: float | None = None) -> PublishResult:
        """Publish a credential that follows no claim of ours (the first one after ``init``, a
        fresher local one after a new epoch): under the state's own fence."""
        return self.publish(credential, gen, snapshot.fence, snapshot.version, expires_in)

    # ----- members -----------------------------------------------------------------------
    def heartbeat(self, gen: int = 0, version: int = 0,
                  propagation_ms: float | None = None) -> Heartbeat:
        """Say this member is alive; measure the clock offset to Redis' TIME."""
        wall, mono = self.clock.now(), self.clock.monotonic()
        redis_ms = self.link.time_ms()
        rtt = max(0.0, self.clock.monotonic() - mono)
        offset = redis_ms / 1000 - (wall + rtt / 2)
        info = {"name": self.member.name, "offset_s": round(offset, 4),
                "rtt_s": round(rtt, 5), "gen": gen, "version": version,
                "propagation_ms": propagation_ms}
        seen = int(self.link.run("heartbeat", [self._key("members")],
                                 [self.me, json.dumps(info, separators=(",", ":"))]))
        return Heartbeat(seen, offset, rtt)

    def members(self) -> list[MemberInfo]:
        now_ms = self.link.time_ms()
        found = [_member(mid, raw, now_ms)
                 for mid, raw in self.link.hash(self._key("members")).items()]
        return sorted((m for m in found if m is not None), key=lambda m: m.member_id)

    def forget_member(self) -> None:
        self.link.hdel(self._key("members"), self.me)

    # ----- events from the subscriber ----------------------------------------------------
    def absorb(self, event: object) -> None:
        """Bookkeeping for one subscriber event, on the loop: gossip and the view. Call it for
        every cluster event before acting on it."""
        if isinstance(event, Claimed):
            self._record(event.claim_id, event.agent, event.fence, False)
        elif isinstance(event, Lost):
            self._record(event.claim_id, event.agent, event.fence, True)
        elif isinstance(event, Released):
            self.gossip.released(event.claim_id, event.agent)
        elif isinstance(event, (StatePublished, Resubscribed)):
            snap = event.snapshot
            if snap.epoch == self.view.epoch and not snap.problem:
                # Saved later (save_view): another machine's login reaches the stores
                # first; the view only sharpens rollback detection, never decides a send.
                self._see(snap.fence, snap.version, save=False)

    def close(self) -> None:
        self.link.close()


def _member(member_id: str, raw: bytes, now_ms: int) -> MemberInfo | None:
    seen_text, _, body = raw.decode(errors="replace").partition("|")
    try:
        info = json.loads(body)
        seen = int(seen_text)
        propagation = info.get("propagation_ms")
        return MemberInfo(member_id, str(info.get("name", "")), seen, (now_ms - seen) / 1000,
                          float(info.get("offset_s", 0.0)), int(info.get("gen", 0)),
                          int(info.get("version", 0)),
                          float(propagation) if isinstance(propagation, (int, float)) else None)
    except (ValueError, TypeError, AttributeError):
        return None  # a damaged entry is not a member
