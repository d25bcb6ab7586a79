"""Building a member's objects from the settings, and the ``credsync cluster`` operations.

``ClusterAdmin(settings)`` is the one entry point: the agent calls ``open_client()`` (None when
this login is in no cluster: single-machine behaviour unchanged) and ``subscriber()``; the CLI
calls ``init``, ``invite``, ``join``, ``report`` and ``leave``, and prints what they return.
Nothing here prints or exits.
"""

from __future__ import annotations

import json
import queue
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from agent import crypto
from agent.clock import Clock, SystemClock
from agent.cluster.client import ClusterClient, Tunables
from agent.cluster.envelope import ClusterKeys
from agent.cluster.gossip import Gossip
from agent.cluster.invite import (
    INVITE_TTL_S,
    InviteCode,
    new_login_id,
    open_invite,
    parse_code,
    seal_invite,
)
from agent.cluster.keystore import Keychain, KeyStore, redis_password
from agent.cluster.membership import GOSSIP_FILE, Membership, MembershipFile, ViewFile
from agent.cluster.node import HELD_FILE, LIVE_FILE, ClusterNode
from agent.cluster.redisio import RedisLink, Timeouts
from agent.cluster.subscriber import Subscriber
from agent.cluster.urls import RedisTarget, parse_redis_url
from agent.errors import ClusterError, CredsyncError
from agent.ledger import Ledger
from agent.stores.keychain import KeychainBackend, backend_or_unavailable

if TYPE_CHECKING:
    from agent.config import Settings

MEMBER_ID_BYTES = 6


def _host_name() -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:64]
    return name or "machine"


@dataclass(frozen=True)
class Opened:
    member: Membership
    key: bytes
    link: RedisLink

    @property
    def keys(self) -> ClusterKeys:
        return ClusterKeys.from_key(self.key)


class ClusterAdmin:
    def __init__(self, settings: Settings, clock: Clock | None = None,
                 keychain_backend: KeychainBackend | None = None,
                 host_name: Callable[[], str] = _host_name) -> None:
        self.settings = settings
        self.section = settings.cluster
        self.clock = clock or SystemClock()
        ledger = Ledger(settings.agent.state_dir, settings.claude.config_dirs)
        self.ledger = ledger
        self.scope_dir = ledger.path
        self.members = MembershipFile(self.scope_dir)
        self.host_name = host_name
        self._backend = keychain_backend
        self._keychain: Keychain | None = None

    # ----- building blocks ---------------------------------------------------------------
    @property
    def keychain(self) -> Keychain | None:
        if not self.settings.claude.keychain:
            return None
        if self._keychain is None:
            backend = self._backend if self._backend is not None else backend_or_unavailable()
            self._keychain = Keychain(backend)
        return self._keychain

    def close(self) -> None:
        if self._keychain is not None:
            self._keychain.close()

    @property
    def tunables(self) -> Tunables:
        return Tunables(quarantine_s=self.section.quarantine_s)

    def link(self, target: RedisTarget, client_name: str = "credsync") -> RedisLink:
        password = redis_password(self.section.password_file, self.keychain,
                                  target.password_account)
        timeouts = Timeouts(self.section.connect_timeout_s, self.section.socket_timeout_s)
        return RedisLink(target, password, timeouts, self.section.ca_file, client_name)

    def membership(self) -> Membership | None:
        return self.members.load()

    def _required(self) -> Membership:
        member = self.members.load()
        if member is None:
            raise ClusterError("this login is in no cluster; run credsync cluster init (first "
                               "machine) or credsync cluster join CODE --redis URL")
        return member

    def open(self) -> Opened:
        member = self._required()
        key = KeyStore(self.scope_dir, self.keychain).load(member.login_id, member.key_store)
        if ClusterKeys.from_key(key).kid != member.kid:
            raise ClusterError(f"the cluster key does not match {self.members.path} (key id "
                               f"{member.kid}); leave and join again")
        link = self.link(member.target(str(self.members.path)),
                         f"credsync-{member.member_id}")
        return Opened(member, key, link)

    def client(self, opened: Opened) -> ClusterClient:
        return ClusterClient(opened.link, opened.keys, opened.member,
                             Gossip(self.scope_dir / GOSSIP_FILE), ViewFile(self.scope_dir),
                             self.clock, self.tunables)

    def open_client(self) -> ClusterClient | None:
        """The agent's client, or None when this login is in no cluster."""
        if self.members.load() is None:
            return None
        return self.client(self.open())

    def node(self, events: queue.Queue[object] | None = None) -> ClusterNode | None:
        """This machine's part in the cluster (None when the login is in none). With
        ``events`` (the agent), a subscriber puts the cluster's events there once started;
        one-shot commands read and claim through it without one."""
        client = self.open_client()
        if client is None:
            return None
        factory = None
        if events is not None:
            queue_ = events

            def factory(c: ClusterClient) -> Subscriber:
                return self.subscriber(c, queue_)
        return ClusterNode(client, self.clock, self.ledger.journal, self.scope_dir,
                           heartbeat_s=self.section.heartbeat_s,
                           claim_valid_s=self.section.claim_valid_s,
                           fallback=self.section.fallback, subscriber_factory=factory)

    def subscriber(self, client: ClusterClient, events: queue.Queue[object]) -> Subscriber:
        """A subscriber on links of its own (started by the caller, stopped by the caller)."""
        member = client.member
        link = self.link(member.target(str(self.members.path)),
                         f"credsync-{member.member_id}-sub")
        from agent.cluster.state import StateReader

        return Subscriber(lambda: link.subscription(member.channel),
                          StateReader(link, client.keys, member), client.keys, member, events,
                          self.clock, echo_every_s=self.section.echo_every_s,
                          echo_deadline_s=self.section.echo_deadline_s,
                          confirm_deadline_s=self.section.socket_timeout_s)

    # ----- commands ----------------------------------------------------------------------
    def _not_yet_member(self) -> None:
        existing = self.members.load()
        if existing is not None:
            raise ClusterError(f"this login is already in cluster {existing.login_id} (member "
                               f"{existing.member_id}, {existing.redis_url}); run credsync "
                               "cluster leave first")

    def _record(self, login_id: str, key: bytes, url: RedisTarget) -> Membership:
        self.ledger.ensure()
        where = KeyStore(self.scope_dir, self.keychain).save(login_id, key)
        member = Membership(login_id, secrets.token_hex(MEMBER_ID_BYTES), self.host_name(),
                            url.shown, ClusterKeys.from_key(key).kid, where,
                            int(self.clock.now() * 1000))
        self.members.save(member)
        return member

    def init(self, url: str, field: str = "--redis") -> Membership:
        """Create a cluster for this login: a new login id and key, the genesis epoch."""
        self._not_yet_member()
        target = parse_redis_url(url, field)
        link = self.link(target)
        try:
            link.ping()
            login_id, key = new_login_id(), crypto.random_key()
            member = self._record(login_id, key, target)
            client = self.client(Opened(member, key, link))
            client.ensure_epoch(genesis=True)
            link.set(member.key("meta"), json.dumps({"kid": member.kid, "protocol": 1}))
            client.sync()
            client.heartbeat()
            return member
        finally:
            link.close()

    def invite(self, ttl_s: float = INVITE_TTL_S) -> tuple[str, Membership]:
        """A one-time join code, valid ``ttl_s``; Redis holds only the key sealed under it."""
        opened = self.open()
        try:
            code = InviteCode.new(opened.member.login_id)
            blob = seal_invite(code, opened.key, opened.member.member_id)
            if not opened.link.set_new(opened.member.key(f"invite:{code.invite_id}"), blob,
                                       ttl_s):
                raise ClusterError("could not store the invitation; try again")
            return code.text, opened.member
        finally:
            opened.link.close()

    def join(self, code_text: str, url: str, field: str = "--redis") -> Membership:
        self._not_yet_member()
        code = parse_code(code_text)
        target = parse_redis_url(url, field)
        link = self.link(target)
        try:
            link.ping()
            probe = Membership(code.login_id, "0" * 12, "", target.shown, "0" * 12, "file", 0)
            blob = link.getdel(probe.key(f"invite:{code.invite_id}"))
            if blob is None:
                raise ClusterError("this join code is unknown to that Redis, used, or expired "
                                   "(a code works once, for 10 minutes); check --redis, or run "
                                   "credsync cluster invite on a member for a new one")
            key, _ = open_invite(code, blob)
            self._check_meta(link, probe, ClusterKeys.from_key(key).kid)
            member = self._record(code.login_id, key, target)
            client = self.client(Opened(member, key, link))
            client.sync()
            client.heartbeat()
            return member
        finally:
            link.close()

    @staticmethod
    def _check_meta(link: RedisLink, probe: Membership, kid: str) -> None:
        raw = link.get(probe.key("meta"))
        if raw is None:
            return  # Redis lost its data since the invitation: the key is still the cluster's
        try:
            recorded = json.loads(raw).get("kid")
        except (ValueError, AttributeError):
            recorded = None
        if recorded != kid:
            raise ClusterError("the invitation's key is not the cluster's current key; ask "
                               "for a new code")

    def leave(self) -> tuple[Membership | None, str]:
        """Leave the cluster: forget this member in Redis (when it can be reached), remove
        the key and every local cluster file. Returns the membership left (None when there
        was none) and what could not be done in Redis ("" when all went)."""
        member = self.members.load()
        if member is None:
            return None, ""
        problem = ""
        try:
            link = self.link(member.target(str(self.members.path)))
            try:
                link.hdel(member.key("members"), member.member_id)
            finally:
                link.close()
        except CredsyncError as exc:
            problem = str(exc)
        KeyStore(self.scope_dir, self.keychain).delete(member.login_id, member.key_store)
        for path in (self.scope_dir / GOSSIP_FILE, ViewFile(self.scope_dir).path,
                     self.scope_dir / HELD_FILE, self.scope_dir / LIVE_FILE):
            path.unlink(missing_ok=True)
        self.members.remove()
        return member, problem

    def report(self) -> dict[str, Any]:
        """What ``cluster status`` shows: never a token, never a secret."""
        member = self.members.load()
        if member is None:
            return {"member": False}
        out: dict[str, Any] = {"member": True, **asdict(member),
                               "membership_file": str(self.members.path)}
        try:
            opened = self.open()
        except CredsyncError as exc:
            return {**out, "reachable": False, "error": str(exc)}
        try:
            client = self.client(opened)
            snapshot = client.state()
            out.update(reachable=True, error="", epoch=snapshot.epoch,
                       view=asdict(client.view),
                       state=_state_json(snapshot),
                       members=[m.to_json() for m in client.members()],
                       gossip_claims=len(client.gossip.claims()))
        except CredsyncError as exc:
            out.update(reachable=False, error=str(exc))
        finally:
            opened.link.close()
        return out


def _state_json(snapshot: Any) -> dict[str, Any] | None:
    if snapshot.payload is None and not snapshot.problem:
        return None
    payload = snapshot.payload
    return {"version": snapshot.version, "fence": snapshot.fence, "gen": snapshot.gen,
            "by": payload.by if payload else "", "problem": snapshot.problem,
            "issued_redis_ms": payload.issued_redis_ms if payload else None,
            "fingerprint": payload.credential.fingerprint if payload else None}

