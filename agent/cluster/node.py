"""One machine's part in a cluster, on the agent's loop: what it holds of the shared login,
whether Redis can be reached, and the claim around every refresh.

Three users, one object:
- the loop hands it the subscriber's events (``handle``, bookkeeping only) and runs its
  deadlines (``due``: the epoch check after a resubscribe, heartbeats, reconnecting);
- ``agent.stores.cluster.ClusterStore`` reads the state it holds (the shared login, its
  ``expiresAt`` put on this machine's clock) and writes through ``publish_local``: a login
  made here (``/login``, a CLI's own refresh) goes out as the next generation, along the one
  write path every store is written by;
- the refresh coordinator, inside its locks, asks ``hold`` (may this machine refresh now?),
  ``check`` (did a newer generation arrive?), ``claim`` after journalling the token, then
  ``sent``, ``unsent`` or ``lost``.

Freshness across machines is the generation: a state is adopted only when its ``gen`` is
higher than the one held. ``expiresAt`` comes from each refresher's clock, so an adopted
login's expiry is recomputed from Redis' clock (``issued_redis_ms + expires_in - offset``):
on one machine every ``expiresAt`` is then on that machine's clock, and the local winner rule
compares like with like. When a newer state says which claim it came from, the token that
claim names is marked spent in this machine's journal: it can never be sent from here, and
it loses the local contest to the state that replaced it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.cluster.client import ClaimKind, ClaimResult, ClusterClient, PublishKind
from agent.cluster.state import (
    Claimed,
    LinkDown,
    Lost,
    Released,
    Resubscribed,
    Snapshot,
    StatePublished,
)
from agent.credential import Credential
from agent.errors import ClusterError, ClusterUnavailable, StoreError
from agent.fsutil import atomic_write, ensure_private_dir, read_bytes
from agent.ledger import Journal
from agent.refresh.peers import Claim, Hold

log = logging.getLogger("credsync.cluster")

LIVE_FILE = "cluster-live.json"  # what status shows: link, offset, members, last propagation
HELD_FILE = "cluster-held.json"  # the generation held (0600, like last-good.json: it has tokens)
RECONNECT_S = (1.0, 2.0, 4.0)  # as the subscriber: back within seconds of Redis
SOLO_AFTER_S = 600.0  # fallback = "solo": refresh alone after this long without Redis...
SOLO_QUIET_S = 86400.0  # ...when no other member was seen for this long
TAKEN_RETRY_S = 1.0  # another member holds the claim: look again this often
# A claim that long without a state, release or "lost" from its holder (a machine that died
# or vanished mid-refresh): the token may be spent, so a re-login is needed (and said).
STUCK_S = 300.0
SAME_CLOCK_MS = 1000.0  # expiry differences below this are not a skewed clock
PUBLISH_TRIES = 3
EVENTS = (StatePublished, Resubscribed, Claimed, Released, Lost, LinkDown)


def same_pair(a: Credential | None, b: Credential | None) -> bool:
    """The same login, whatever each machine's clock made of its expiry."""
    return a is not None and b is not None and a.access_token == b.access_token \
        and a.refresh_token == b.refresh_token


def with_expiry(cred: Credential, expires_at_ms: int) -> Credential:
    return Credential({**cred.oauth, "expiresAt": int(expires_at_ms)})


@dataclass(frozen=True)
class Held:
    """The shared login as this machine holds it."""

    credential: Credential  # expiresAt on this machine's clock
    gen: int
    version: int
    fence: int
    by: str


@dataclass
class Live:
    """What status shows of the cluster, saved whenever it changes (no token in it)."""

    down_since: float | None = None
    down_reason: str = ""
    offset_s: float | None = None
    last_propagation_ms: float | None = None
    last_adopted_at: float | None = None
    held: dict[str, Any] | None = None
    members: list[dict[str, Any]] = field(default_factory=list)
    heartbeat_at: float | None = None


class ClusterNode:
    def __init__(self, client: ClusterClient, clock: Clock, journal: Journal, scope_dir: Path,
                 *, heartbeat_s: float = 30.0, claim_valid_s: float = 10.0,
                 fallback: str = "never",
                 subscriber_factory: Callable[[ClusterClient], Any] | None = None) -> None:
        self.client = client
        self.clock = clock
        self.journal = journal
        self.live_path = scope_dir / LIVE_FILE
        self.heartbeat_s = heartbeat_s
        self.claim_valid_s = claim_valid_s
        self.fallback = fallback
        self._subscriber_factory = subscriber_factory
        self._subscriber: Any = None
        self.held_path = scope_dir / HELD_FILE
        self._held: Held | None = self._load_held()
        self.redis_state: Snapshot | None = None  # what Redis held when last read
        self.live = self._load_live()
        self._saved = json.dumps(asdict(self.live), sort_keys=True)
        self.need_sync = True
        self._round = False
        self._next_beat = 0.0
        self._next_try = 0.0
        self._tries = 0
        self._republish = False
        self._unsaved = False
        self._taken_since: dict[str, float] = {}  # claim id -> first TAKEN (monotonic)

    # ----- the generation held -----------------------------------------------------------
    @property
    def held(self) -> Held | None:
        return self._held

    @held.setter
    def held(self, value: Held | None) -> None:
        # Kept across restarts: with Redis down at start (or its data lost), this machine
        # still knows which generation it has, and republishes it when Redis is back empty.
        # Written by flush(), after the round that puts it in the stores: the stores first.
        self._held = value
        self._unsaved = True

    def flush(self) -> None:
        """Save what changed (held generation, view, status), after the loop's round."""
        if not self._unsaved:
            return
        self._unsaved = False
        self.client.save_view()
        self._save_live()
        value = self._held
        if value is None:
            return
        obj = {"gen": value.gen, "version": value.version, "fence": value.fence,
               "by": value.by, "oauth": value.credential.to_json_obj()}
        try:
            ensure_private_dir(self.held_path.parent)
            atomic_write(self.held_path, json.dumps(obj, sort_keys=True).encode())
        except StoreError as exc:
            log.warning("cannot save the cluster generation held: %s", exc)

    def _load_held(self) -> Held | None:
        try:
            raw = read_bytes(self.held_path, 1_000_000)
            obj = json.loads(raw) if raw else None
            if not isinstance(obj, dict) or not isinstance(obj.get("oauth"), dict):
                return None
            cred = Credential(obj["oauth"])
            if cred.is_blank:
                return None
            return Held(cred, int(obj["gen"]), int(obj["version"]), int(obj["fence"]),
                        str(obj["by"]))
        except (StoreError, ValueError, KeyError, TypeError):
            return None  # rebuilt from Redis: Redis or the local stores have the login too

    @property
    def login_id(self) -> str:
        return self.client.member.login_id

    @property
    def location(self) -> str:
        return self.client.member.redis_url

    # ----- the loop ----------------------------------------------------------------------
    def start(self) -> None:
        self._sync()
        if self._republish:
            self._republish_held()
        if self._subscriber_factory is not None:
            self._subscriber = self._subscriber_factory(self.client)
            self._subscriber.start()

    def stop(self) -> None:
        self.flush()
        if self._subscriber is not None:
            # Briefly: the thread is a daemon that touches nothing of the agent's, and the
            # service manager gives the whole stop 2 s.
            self._subscriber.stop(0.3)
        self.client.close()

    def owns(self, event: object) -> bool:
        return isinstance(event, EVENTS)

    def handle(self, event: object) -> bool:
        """Bookkeeping for one subscriber event; True when a round should follow."""
        self.client.absorb(event)
        if isinstance(event, LinkDown):
            self._down(event.reason, event.since)
        elif isinstance(event, Resubscribed):
            self.need_sync, self._next_try = True, 0.0
        elif isinstance(event, StatePublished):
            self._seen(event.snapshot, event.received_at)
        self._unsaved = True
        return self._take_round()

    def next_at(self) -> float:
        return self._next_try if self.need_sync else self._next_beat

    def clock_moved(self, delta: float) -> None:
        self._next_try += delta
        self._next_beat += delta

    def due(self, now: float) -> bool:
        """The epoch check when it is wanted, heartbeats; True when a round should follow."""
        if self.need_sync and now >= self._next_try:
            self._sync()
            if self._republish:
                self._republish_held()
        elif not self.need_sync and now >= self._next_beat:
            self._heartbeat(now)
        self._unsaved = True
        return self._take_round()

    def _take_round(self) -> bool:
        wanted, self._round = self._round, False
        return wanted

    def _sync(self) -> None:
        now = self.clock.now()
        try:
            result = self.client.sync()
        except ClusterError as exc:
            self._down(str(exc), now)
            self._next_try = now + RECONNECT_S[min(self._tries, len(RECONNECT_S) - 1)]
            self._tries += 1
            return
        if result.new_epoch:
            log.warning("Redis lost or rolled back its data: new epoch, %d claims re-seeded",
                        result.reseeded)
        self.need_sync, self._tries = False, 0
        self._up()
        self._seen(result.snapshot, None)
        held = self.held
        if held is not None and result.snapshot.gen < held.gen:
            self._republish = True  # Redis lost (or never had) what this machine holds
        self._heartbeat(now)

    def _heartbeat(self, now: float) -> None:
        self._next_beat = now + self.heartbeat_s
        held = self.held
        try:
            beat = self.client.heartbeat(held.gen if held else 0, held.version if held else 0,
                                         self.live.last_propagation_ms)
            members = self.client.members()
        except ClusterError as exc:
            self._down(str(exc), now)
            self.need_sync, self._next_try = True, now + RECONNECT_S[0]
            return
        self.live.offset_s = round(beat.offset_s, 4)
        self.live.heartbeat_at = now
        self.live.members = [m.to_json() for m in members]
        if abs(beat.offset_s) > 30:
            log.warning("this machine's clock is %.0f s off Redis' clock", -beat.offset_s)

    def _down(self, reason: str, since: float) -> None:
        if self.live.down_since is None:
            log.warning("cluster offline: %s", reason)
            self.live.down_since = since
        self.live.down_reason = reason
        self.need_sync = True

    def _up(self) -> None:
        if self.live.down_since is not None:
            log.info("cluster reachable again (offline %.0f s)",
                     self.clock.now() - self.live.down_since)
        self.live.down_since, self.live.down_reason = None, ""

    # ----- what Redis holds --------------------------------------------------------------
    def _seen(self, snapshot: Snapshot, received_at: float | None) -> None:
        if snapshot.epoch == self.client.view.epoch:
            self.redis_state = snapshot
        if snapshot.problem:
            log.warning("the cluster's state does not open (%s); not adopted", snapshot.problem)
            return
        payload = snapshot.payload
        if payload is None or (self.held is not None and payload.gen <= self.held.gen):
            return
        local = self._on_this_clock(snapshot)
        before = self.held
        self.held = Held(local, payload.gen, snapshot.version, snapshot.fence, payload.by)
        self._mark_replaced(before, payload.prev_claim)
        if received_at is not None:
            offset = self.live.offset_s or 0.0
            self.live.last_propagation_ms = round(
                max(0.0, (received_at + offset) * 1000 - payload.issued_redis_ms), 2)
        self.live.last_adopted_at = self.clock.now()
        self.live.held = {"gen": payload.gen, "version": snapshot.version,
                          "fingerprint": local.fingerprint, "by": payload.by}
        if payload.by != self.client.me:
            log.info("cluster: generation %d (%s) from member %s", payload.gen,
                     local.fingerprint, payload.by)
            self._round = True

    def _on_this_clock(self, snapshot: Snapshot) -> Credential:
        payload = snapshot.payload
        assert payload is not None
        cred = payload.credential
        if payload.by == self.client.me:
            return cred
        offset = self.live.offset_s
        if offset is None:
            return cred  # no heartbeat yet: the publisher's own figure is the best there is
        if payload.expires_in is not None and payload.expires_in > 0:
            ms = payload.issued_redis_ms + payload.expires_in * 1000 - offset * 1000
        else:
            theirs = next((m.get("offset_s") for m in self.live.members
                           if m.get("member_id") == payload.by), None)
            if not isinstance(theirs, (int, float)):
                return cred
            ms = cred.expires_at_ms + (theirs - offset) * 1000
        # Under a second is the measurement's own noise: the publisher's figure is kept, so
        # that every machine without a real skew holds the very same document.
        return cred if abs(ms - cred.expires_at_ms) < SAME_CLOCK_MS else with_expiry(cred, int(ms))

    def _mark_replaced(self, before: Held | None, prev_claim: str) -> None:
        # The login this state was refreshed from is spent: never sent from here, and it loses
        # to its successor in the local contest even where a clock made its expiry later.
        if before is None or not prev_claim:
            return
        old = before.credential
        if self.client.keys.claim_id(old.refresh_token) != prev_claim:
            return
        try:
            self.journal.record(old.refresh_token, self.clock.now())
        except (OSError, StoreError) as exc:
            log.warning("cannot record the replaced login as spent: %s", exc)

    def claimed_elsewhere(self, cred: Credential) -> bool:
        """Has another member claimed this login's refresh token (so it is, or will be,
        spent)?"""
        claim_id = self.client.keys.claim_id(cred.refresh_token)
        return any(c.claim_id == claim_id and c.agent != self.client.me
                   for c in self.client.gossip.claims())

    # ----- the store's side --------------------------------------------------------------
    def publish_local(self, cred: Credential) -> bool:
        """Make a login this machine has the cluster's (ClusterStore.write). False when the
        cluster already holds it, or holds something newer (adopted instead)."""
        if self.need_sync:
            self._sync()
            if self.need_sync:
                raise StoreError(f"cluster: Redis cannot be reached ({self.live.down_reason})")
        if self.claimed_elsewhere(cred):
            return False  # spent by another member: never handed around again
        for _ in range(PUBLISH_TRIES):
            state = self.redis_state
            if state is not None and same_pair(state.credential, cred):
                return False
            if state is not None and state.problem:
                raise StoreError(f"cluster: the state in Redis does not open ({state.problem})")
            held = self.held
            if held is not None and same_pair(held.credential, cred):
                gen = held.gen  # the same login again (Redis lost it): the same generation
            else:
                gen = max(held.gen if held else 0, state.gen if state else 0) + 1
            if state is not None and state.gen >= gen:
                self._seen(state, None)  # Redis has a newer one: the next round takes it
                self._round = True
                return False
            try:
                result = self.client.seed(cred, gen, state or Snapshot(self.client.view.epoch,
                                                                       0, 0))
            except ClusterError as exc:
                self._down(str(exc), self.clock.now())
                raise StoreError(f"cluster: cannot publish ({exc})") from exc
            if result.kind is PublishKind.OK:
                self._published(cred, gen, result.version, state.fence if state else 0)
                return True
            if result.kind is PublishKind.EPOCH:
                self.need_sync = True
                raise StoreError("cluster: the epoch changed; publishing again after the "
                                 "epoch check")
            self._reread()
        return False

    def _republish_held(self) -> None:
        self._republish = False
        held = self.held
        if held is None:
            return
        try:
            if self.publish_local(held.credential):
                log.info("cluster: generation %d published again (Redis had lost it)",
                         held.gen)
        except StoreError as exc:
            log.warning("cannot publish the generation held again: %s", exc)

    def _published(self, cred: Credential, gen: int, version: int, fence: int) -> None:
        self.held = Held(cred, gen, version, fence, self.client.me)
        self.redis_state = None  # read again before the next decision
        self.live.held = {"gen": gen, "version": version, "fingerprint": cred.fingerprint,
                          "by": self.client.me}
        self.flush()  # our own publish: the stores already hold it
        log.info("cluster: published generation %d (%s)", gen, cred.fingerprint)

    def _reread(self) -> Snapshot | None:
        try:
            snapshot = self.client.state()
        except ClusterError as exc:
            self._down(str(exc), self.clock.now())
            return None
        self._seen(snapshot, None)
        return snapshot

    # ----- the coordinator's side --------------------------------------------------------
    def others(self, within_s: float | None = None) -> list[dict[str, Any]]:
        now_ms = self.clock.now() * 1000
        return [m for m in self.live.members if m.get("member_id") != self.client.me
                and (within_s is None or now_ms - float(m.get("seen_ms", 0)) < within_s * 1000)]

    def check(self) -> bool:
        """Read Redis now (inside the refresh locks); True when a newer generation arrived."""
        before = self.held.gen if self.held else 0
        if self.need_sync:
            self._sync()
        else:
            self._reread()
        return (self.held.gen if self.held else 0) > before

    def holding(self, now: float) -> tuple[str, float] | None:
        """Why refreshing is held now and since when (for the alert), or None."""
        hold = self.hold(now)
        since = self.live.down_since
        return (hold.reason, since) if hold is not None and since is not None else None

    def hold(self, now: float) -> Hold | None:
        """Why this machine may not refresh now, or None."""
        down = self.live.down_since
        if down is None:
            return None
        if not self.others():
            return None  # no other member known: refreshing alone sends the token once
        if self.fallback == "solo" and now - down > SOLO_AFTER_S and \
                not self.others(SOLO_QUIET_S):
            return None
        return Hold(f"the cluster's Redis cannot be reached (since {_hm(down)}) and other "
                    "machines share this login: not refreshing, sessions keep their token",
                    5.0)

    def claim(self, cred: Credential) -> Claim | Hold:
        """Claim ``cred``'s refresh token (the caller has journalled it)."""
        if self.live.down_since is not None and not self.need_sync:
            self.need_sync = True
        if self.need_sync:
            self._sync()
        if self.live.down_since is not None:
            if self.hold(self.clock.now()) is None:
                return Claim(None, self.clock.monotonic())
            return Hold(f"cannot reach Redis to claim the refresh ({self.live.down_reason})",
                        5.0)
        seen = self.redis_state.version if self.redis_state is not None else 0
        try:
            result = self.client.claim(cred.refresh_token, seen)
        except ClusterUnavailable as exc:
            self._down(str(exc), self.clock.now())
            return Hold(f"the claim's answer was lost ({exc}); claiming again later", 2.0)
        except ClusterError as exc:
            return Hold(f"cannot claim: {exc}", 5.0)
        return self._claimed(result)

    def _claimed(self, result: ClaimResult) -> Claim | Hold:
        if result.kind is ClaimKind.OK:
            return Claim(result, self.clock.monotonic())
        if result.kind is ClaimKind.STALE:
            self._reread()
            return Hold("another machine published a newer login", 0.0, adopt=True)
        if result.kind is ClaimKind.TAKEN:
            name = self._name_of(result.holder)
            if result.lost:
                return Hold(f"machine {name} sent this refresh token and lost the answer",
                            0.0, relogin=True)
            first = self._taken_since.setdefault(result.claim_id, self.clock.monotonic())
            if self.clock.monotonic() - first > STUCK_S:
                return Hold(f"machine {name} claimed this refresh token {STUCK_S / 60:g} min "
                            "ago and never answered (stopped or gone?)", 0.0, relogin=True)
            return Hold(f"machine {name} is refreshing this login", TAKEN_RETRY_S)
        if result.kind is ClaimKind.QUARANTINE:
            return Hold("Redis lost its data recently; every machine re-seeds its claims "
                        "first", max(0.5, result.retry_after_s))
        self.need_sync = True
        return Hold("the cluster's epoch changed", 0.2)

    def _name_of(self, member_id: str) -> str:
        return next((str(m.get("name")) for m in self.live.members
                     if m.get("member_id") == member_id), member_id)

    def expired(self, claim: Claim) -> bool:
        """Held too long to send (a pause between claim and request: GC, SIGSTOP, suspend)."""
        return self.clock.monotonic() - claim.at_mono > self.claim_valid_s

    def sent(self, claim: Claim, new: Credential, expires_in: float | None) -> None:
        """The answer came: ``new`` is the next generation."""
        held = self.held
        gen = max(held.gen if held else 0, self.redis_state.gen if self.redis_state else 0) + 1
        if claim.result is None:
            self.held = Held(new, gen, held.version if held else 0, 0, self.client.me)
            return  # alone: published by the store's write once Redis is back
        for _ in range(PUBLISH_TRIES):
            expected = self.redis_state.version if self.redis_state is not None else 0
            try:
                result = self.client.publish(new, gen, claim.result.fence, expected,
                                             expires_in, claim.result.claim_id)
            except ClusterError as exc:
                self._down(str(exc), self.clock.now())
                break
            if result.kind is PublishKind.OK:
                self._published(new, gen, result.version, claim.result.fence)
                return
            if result.kind is PublishKind.EPOCH:
                self.need_sync = True  # Redis lost its data meanwhile: republished after
                break
            if result.kind is not PublishKind.STALE:
                log.error("cluster: the refreshed login was not published (%s)", result.kind)
                break
            state = self._reread()
            if state is not None and state.gen >= gen:
                break
        # Kept here; the store's write publishes it when Redis takes it.
        self.held = Held(new, gen, held.version if held else 0, claim.result.fence,
                         self.client.me)

    def unsent(self, claim: Claim) -> None:
        if claim.result is None:
            return
        try:
            self.client.release(claim.result)
        except ClusterError as exc:  # it stays claimed; this member may claim it again
            log.warning("cluster: cannot release the claim: %s", exc)

    def lost_token(self, cred: Credential) -> None:
        """This machine sent ``cred``'s token in an earlier life and never saw the answer (it
        was killed): mark its claim lost, so that the others stop waiting for it."""
        claim_id = self.client.keys.claim_id(cred.refresh_token)
        mine = next((c for c in self.client.gossip.claims()
                     if c.claim_id == claim_id and c.agent == self.client.me), None)
        if mine is not None and not mine.lost:
            self.lost(Claim(ClaimResult(ClaimKind.OK, claim_id, fence=mine.fence),
                            self.clock.monotonic()))

    def lost(self, claim: Claim) -> None:
        if claim.result is None:
            return
        try:
            self.client.lost(claim.result)
        except ClusterError as exc:
            log.warning("cluster: cannot mark the claim lost in Redis: %s", exc)

    # ----- status ------------------------------------------------------------------------
    def _load_live(self) -> Live:
        try:
            raw = read_bytes(self.live_path, 1_000_000)
            obj = json.loads(raw) if raw else {}
        except (StoreError, ValueError):
            obj = {}
        if not isinstance(obj, dict):
            obj = {}
        members = obj.get("members")
        # Remembered across restarts: with Redis down at start, the other members are still
        # known, and so nobody refreshes alone.
        return Live(members=[m for m in members if isinstance(m, dict)]
                    if isinstance(members, list) else [])

    def _save_live(self) -> None:
        text = json.dumps(asdict(self.live), sort_keys=True)
        if text == self._saved:
            return
        try:
            ensure_private_dir(self.live_path.parent)
            atomic_write(self.live_path, text.encode())
            self._saved = text
        except StoreError as exc:
            log.warning("cannot save the cluster's status: %s", exc)


def load_live(scope_dir: Path) -> dict[str, Any]:
    """What the agent last saved of the cluster, for ``credsync status``."""
    try:
        raw = read_bytes(scope_dir / LIVE_FILE, 1_000_000)
        obj = json.loads(raw) if raw else {}
    except (StoreError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _hm(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def status_of(scope_dir: Path, now: float) -> dict[str, Any] | None:
    """The cluster part of ``credsync status`` (``extra.cluster``), from what the agent last
    saved (no Redis call; fingerprints only). None when this login is in no cluster.

    ``{"state": "online" | "offline" | "not reached", "offline_since": ISO | null,
    "reason": str, "member": {"name", "member_id"}, "redis": URL, "login_id": str,
    "generation": {"gen", "version", "fingerprint", "by"} | null, "offset_s": float | null,
    "last_propagation_ms": float | null, "last_heartbeat_at": ISO | null,
    "members": [{"name", "member_id", "seen_at": ISO, "offset_s", "gen",
    "propagation_ms"}]}``
    """
    from agent.cluster.membership import MembershipFile

    try:
        member = MembershipFile(scope_dir).load()
    except ClusterError as exc:
        return {"state": "unreadable", "reason": str(exc)}
    if member is None:
        return None
    live = load_live(scope_dir)
    down, beat = _number(live.get("down_since")), _number(live.get("heartbeat_at"))
    state = "offline" if down is not None else "not reached" if beat is None else "online"
    held = live.get("held")
    members = live.get("members")
    return {
        "state": state, "offline_since": _iso(down) if down is not None else None,
        "reason": str(live.get("down_reason") or ""),
        "member": {"name": member.name, "member_id": member.member_id},
        "redis": member.redis_url, "login_id": member.login_id,
        "generation": held if isinstance(held, dict) else None,
        "offset_s": _number(live.get("offset_s")),
        "last_propagation_ms": _number(live.get("last_propagation_ms")),
        "last_heartbeat_at": _iso(beat) if beat is not None else None,
        "members": [_member_json(m) for m in members if isinstance(m, dict)]
        if isinstance(members, list) else [],
    }


def _member_json(m: dict[str, Any]) -> dict[str, Any]:
    seen = _number(m.get("seen_ms"))
    return {"name": str(m.get("name", "")), "member_id": str(m.get("member_id", "")),
            "seen_at": _iso(seen / 1000) if seen is not None else None,
            "offset_s": _number(m.get("offset_s")), "gen": _number(m.get("gen")),
            "propagation_ms": _number(m.get("propagation_ms"))}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
