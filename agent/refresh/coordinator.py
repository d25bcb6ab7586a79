"""Proactive refresh under every lock that guards the token family.

Rules (prior-art.md, RFC 9700 s.4.14.2): one redeemer at a time across every process that can see
the family; decide inside the locks after re-reading every store, and adopt a fresher credential
instead of sending anything; record a refresh token in the journal before it is sent and never
send one that is in it; persist the new pair before anything else, then write every store, then
release. No store is ever cleared or deleted here.

Locks, in this order, each with a bounded wait: credsync's ``refresh.lock`` (portalocker, every
credsync process), then for every config dir, sorted by real path, the CLI's
``.oauth_refresh.lock`` and its legacy ``<realpath(dir)>.lock``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent.clock import Clock
from agent.credential import Credential
from agent.errors import InvalidGrantError, LockError, StoreError, TransientRefreshError
from agent.ledger import token_hash
from agent.locks import owner as lockowner
from agent.locks.filelock import FileLock
from agent.locks.mkdirlock import MkdirLock, legacy_refresh_lock, oauth_refresh_lock
from agent.reconcile import Reconciler
from agent.refresh.peers import Claim, Hold, Peers
from agent.stores.base import Role
from agent.winner import LoginState, Verdict

if TYPE_CHECKING:  # pydantic stays out of `credsync token`'s start-up
    from agent.config import RefreshSection

log = logging.getLogger("credsync.refresh")

CLI_LOCK_WAIT_S = 10.0
LOCK_SLICE_S = 0.2  # lock waits are cut in slices: a stop request is noticed between them
POLL_S = 0.02  # how often the loop looks up from its events while the token server answers
MKDIR_POLL_S = 0.05  # between two tries of a CLI lock (mkdir)
# Asked to stop while the token server is answering: wait this long for the answer, then go.
# The service manager's deadline is 2 s; an answer that comes later still reaches last-good.
STOP_GRACE_S = 1.2

# Wait up to the given seconds for the loop's events (handling them); True once a stop was
# asked. The agent passes its own; one-shot commands have nothing to wait for.
Pause = Callable[[float], bool]


def no_pause(seconds: float) -> bool:
    time.sleep(seconds)
    return False
BLOCKED_RETRY_S = 60.0  # a blocked holder is looked at again this often
MIN_INTERVAL_S = 10.0  # never refresh again sooner than this after our own refresh...
MIN_INTERVAL_FRACTION = 0.25  # ...or than this fraction of the lifetime, when that is shorter


class RefreshResultLike(Protocol):
    @property
    def credential(self) -> Credential: ...
    @property
    def expires_in(self) -> float: ...


class Refresher(Protocol):
    def refresh(self, cred: Credential) -> RefreshResultLike: ...


class Kind(str, enum.Enum):
    REFRESHED = "refreshed"
    ADOPTED = "adopted"  # another process had refreshed: its login was taken, nothing sent
    NOT_DUE = "not-due"
    TRANSIENT = "transient"  # network, 5xx, 429: retried later, the token is unspent
    RELOGIN = "relogin-required"
    LOGGED_OUT = "logged-out"  # the user logged out: nothing to refresh
    NONE = "none"  # no login at all
    UNREADABLE = "unreadable"  # the store holding the login cannot be read now: try again
    BUSY = "busy"  # another process holds the locks
    BLOCKED = "blocked"  # a holder credsync cannot write: the CLI keeps this login itself
    HELD = "held"  # another machine refreshes, or the cluster cannot be reached: nothing sent
    STOPPED = "stopped"  # the agent was asked to stop meanwhile

    @classmethod
    def of_state(cls, state: LoginState) -> Kind:
        return {LoginState.LOGGED_OUT: cls.LOGGED_OUT, LoginState.RELOGIN: cls.RELOGIN,
                LoginState.UNREADABLE: cls.UNREADABLE}.get(state, cls.NONE)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    credential: Credential | None = None
    message: str = ""
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.kind in (Kind.REFRESHED, Kind.ADOPTED, Kind.NOT_DUE)


class Schedule:
    """When to refresh a credential: ``at_fraction`` of its lifetime, jittered, and never later
    than ``expiresAt - client_window_s - margin_s`` (before the CLI's own refresh window)."""

    def __init__(self, section: RefreshSection, salt: str) -> None:
        self.section = section
        self.salt = salt

    def lifetime(self, recorded_s: float | None) -> tuple[float, str]:
        if recorded_s and recorded_s > 0:
            return recorded_s, "last refresh"
        return self.section.nominal_lifetime_s, "nominal"

    def jitter(self, cred: Credential) -> float:
        # Drawn once per credential (and per installation, via the salt): the deadline stays
        # put across rounds, while several machines sharing a login do not refresh together.
        j = self.section.jitter
        return random.Random(f"{self.salt}:{cred.fingerprint}").uniform(-j, j)

    def deadline(self, cred: Credential, lifetime_s: float,
                 last_refresh_at: float | None = None) -> float:
        issued = cred.expires_at - lifetime_s
        planned = issued + lifetime_s * (self.section.at_fraction + self.jitter(cred))
        latest = cred.expires_at - self.section.client_window_s - self.section.margin_s
        due = min(planned, latest)
        ends = cred.refresh_token_expires_at
        if ends is not None:
            # A refresh token said to expire is tried before then (at once when the date has
            # passed): the server, not the date, decides whether a re-login is needed.
            due = min(due, ends - self.section.margin_s)
        if last_refresh_at is not None:
            # A misconfiguration never loops. The floor shrinks with the lifetime: a fixed 10 s
            # after a refresh of a token that lives only seconds would let it expire first.
            floor = min(MIN_INTERVAL_S, lifetime_s * MIN_INTERVAL_FRACTION)
            due = max(due, last_refresh_at + floor)
        return due


class Coordinator:
    """One refresh decision at a time, under every lock; stores are written by ``writer``."""

    def __init__(
        self,
        section: RefreshSection,
        writer: Reconciler,
        config_dirs: Sequence[Path],
        refresher: Refresher,
        clock: Clock,
        lock_wait_s: float | None = None,
        cli_lock_wait_s: float = CLI_LOCK_WAIT_S,
        peers: Peers | None = None,
        lifetime_of: Callable[[Credential], float | None] | None = None,
    ) -> None:
        self.section = section
        self.writer = writer
        self.ledger = writer.ledger
        self.stores = writer.stores
        self.config_dirs = list(config_dirs)
        self.refresher = refresher
        self.clock = clock
        self.records = self.ledger.login()
        self.journal = self.ledger.journal
        self.lock = FileLock(self.ledger.refresh_lock_path)
        # Long enough for another credsync process to finish its whole refresh.
        self.lock_wait_s = lock_wait_s if lock_wait_s is not None else section.timeout_s * 2 + 15
        self.cli_lock_wait_s = cli_lock_wait_s
        # Other machines sharing the login (agent.cluster); None on a single machine.
        self.peers = peers
        # A login that says its own lifetime (Codex: the access token's exp - iat) is
        # scheduled by it; otherwise by the last refresh's expires_in, else the nominal one.
        self.lifetime_of = lifetime_of
        self._pause: Pause = no_pause

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.section, self.records.salt)

    # ----- reading -----------------------------------------------------------------------
    def verdict(self) -> Verdict:
        """The winner rule on what every store holds now."""
        return self.writer.verdict()

    def best(self) -> Credential | None:
        return self.verdict().winner

    def refresh_state(self, verdict: Verdict | None = None) -> str:
        """One word for status: the login's state when it is not usable, else the last refresh
        problem (retrying, offline) while it concerns the current login, else ok."""
        verdict = verdict or self.verdict()
        if verdict.winner is None:
            return verdict.state.value
        problem = self.records.problem
        if problem.get("fingerprint") == verdict.winner.fingerprint:
            return str(problem.get("state"))
        return "ok"

    def deadline(self, cred: Credential) -> float:
        own = self.lifetime_of(cred) if self.lifetime_of is not None else None
        lifetime, _ = self.schedule.lifetime(own or self.records.lifetime_s)
        return self.schedule.deadline(cred, lifetime, self.records.refreshed_at)

    # ----- locks -------------------------------------------------------------------------
    def cli_locks(self) -> list[MkdirLock]:
        dirs = sorted({Path(os.path.realpath(d)) for d in self.config_dirs if d.is_dir()})
        return [*(oauth_refresh_lock(d, marked=True) for d in dirs),
                *(legacy_refresh_lock(d, marked=True) for d in dirs)]

    @contextlib.contextmanager
    def locked(self, pause: Pause = no_pause) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            _acquire(self.lock, self.lock_wait_s, pause)
            stack.callback(self.lock.release)
            for lock in self.cli_locks():
                if _acquire(lock, self.cli_lock_wait_s, pause):
                    stack.callback(lock.release)
            yield

    # ----- refreshing --------------------------------------------------------------------
    def run(self, seen: Credential | None = None, force: bool = False,
            pause: Pause = no_pause) -> Outcome:
        """One refresh decision under every lock; ``seen`` is the credential we meant to redeem.
        ``pause`` lets the agent's loop notice a stop request while this waits."""
        self._pause = pause
        try:
            with self.locked(pause):
                self.records.reload()
                self._compact()
                outcome = self._locked(seen, force)
                self._save()
                return outcome
        except Stopping as exc:
            return Outcome(Kind.STOPPED, seen, str(exc))
        except LockError as exc:
            return Outcome(Kind.BUSY, seen, str(exc), retry_after_s=5.0)
        finally:
            self._pause = no_pause

    def _save(self) -> None:
        try:
            self.records.save()
        except StoreError as exc:
            log.warning("cannot save refresh state: %s", exc)

    def _compact(self) -> None:
        if self.journal.needs_compaction():
            try:
                kept = self.journal.compact(self.clock.now())
                log.info("journal compacted: %d hashes kept", kept)
            except StoreError as exc:
                log.warning("cannot compact the journal: %s", exc)

    def _locked(self, seen: Credential | None, force: bool) -> Outcome:
        now = self.clock.now()
        verdict = self.verdict()
        best = verdict.winner
        if best is None:
            return Outcome(Kind.of_state(verdict.state), None, verdict.reason)
        if seen is not None and not best.same_tokens(seen) and \
                self.writer.rules(now).beats(best, seen):
            self.writer.round()
            return Outcome(Kind.ADOPTED, best, "another process had refreshed already")
        if self.peers is not None and self.peers.check():
            adopted = self._adopt(best)
            if adopted is not None:
                return adopted
        if not force and now < self.deadline(best):
            return Outcome(Kind.NOT_DUE, best, "not due yet")
        blocked = self.blocked()
        if blocked:
            # A new login that one of the CLI's own stores cannot take would leave the CLI
            # with a spent refresh token there: refreshing is left to the CLI.
            return Outcome(Kind.BLOCKED, best, "; ".join(blocked), retry_after_s=BLOCKED_RETRY_S)
        hold = self.peers.hold(now) if self.peers is not None else None
        if hold is not None:
            return Outcome(Kind.HELD, best, hold.reason, retry_after_s=hold.retry_after_s)
        return self._redeem(best, now)

    def _adopt(self, cred: Credential) -> Outcome | None:
        """Another machine's newer login arrived: the stores take it; nothing is sent."""
        self.writer.round()
        winner = self.best()
        if winner is None or winner.same_tokens(cred):
            return None
        return Outcome(Kind.ADOPTED, winner, "another machine had refreshed already")

    def _peer_hold(self, cred: Credential, now: float, hold: Hold) -> Outcome:
        self._release(cred, now)  # the journal line: this token was not sent
        if hold.relogin:
            return self._refused(cred, now, hold.reason, hold.reason)
        if hold.adopt:
            adopted = self._adopt(cred)
            if adopted is not None:
                return adopted
        return Outcome(Kind.HELD, cred, hold.reason, retry_after_s=hold.retry_after_s)

    def blocked(self) -> list[str]:
        """The CLI's own stores credsync cannot write now, each with why."""
        return [f"{s.name}: {why}" for s in self.writer.stores
                if s.role is Role.HOLDER and (why := s.write_blocker()) is not None]

    def _redeem(self, cred: Credential, now: float) -> Outcome:
        if self.journal.was_sent(cred.refresh_token):
            if self.peers is not None:
                self.peers.lost_token(cred)  # the other machines stop waiting for our answer
            return self._lost(cred, now, "its refresh token was sent before and the answer is "
                                         "unknown (credsync stopped or the answer was lost)")
        prepare = getattr(self.refresher, "prepare", None)
        if callable(prepare):
            prepare()  # build the HTTP client first: journal-to-send must be as short as can be
        try:
            self.journal.record(cred.refresh_token, now)
        except (OSError, StoreError) as exc:
            # Unrecorded, it could be sent twice after a crash: send nothing (disk full).
            log.warning("cannot record the refresh in the journal (%s); not refreshing", exc)
            return Outcome(Kind.TRANSIENT, cred, f"cannot write the journal: {exc}")
        claim: Claim | None = None
        if self.peers is not None:
            got = self.peers.claim(cred)
            if isinstance(got, Hold):
                return self._peer_hold(cred, now, got)
            claim = got
            if self.peers.expired(claim):
                # Paused between claim and request (GC, SIGSTOP, a suspend): another machine
                # may think this one dead; give the claim back rather than send late.
                self.peers.unsent(claim)
                return self._peer_hold(cred, now, Hold("the claim was held too long before "
                                                       "sending; claiming again", 0.2))
        log.info("refreshing %s (expires %.0f s from now)", cred.fingerprint,
                 cred.expires_at - now)
        try:
            result = self._send(cred)
        except InvalidGrantError as exc:
            self._peers_lost(claim)
            return self._refused(cred, now, "the token server refused the refresh token",
                                 str(exc))
        except TransientRefreshError as exc:
            if exc.may_have_rotated:
                self._peers_lost(claim)
                return self._lost(cred, now, str(exc))
            if self.peers is not None and claim is not None:
                self.peers.unsent(claim)
            self._release(cred, now)
            state = "offline" if cred.expires_at <= now else "retrying"
            self.records.set_problem(state, now, str(exc), cred.fingerprint)
            return Outcome(Kind.TRANSIENT, cred, str(exc), exc.retry_after_s)
        return self._answered(cred, result, claim)

    def _peers_lost(self, claim: Claim | None) -> None:
        if self.peers is not None and claim is not None:
            self.peers.lost(claim)

    def _send(self, cred: Credential) -> RefreshResultLike:
        """The request, on a worker thread while the loop keeps handling its events: a stop
        request is honoured within the service manager's deadline even mid-refresh."""
        if self._pause is no_pause:
            return self.refresher.refresh(cred)
        call = _Call(lambda: self.refresher.refresh(cred), self._keep_late_answer)
        while not call.done.wait(0):
            if self._pause(POLL_S):
                if call.done.wait(STOP_GRACE_S):
                    break
                call.abandon()
                raise Stopping("stopped while the token server was answering; its answer, "
                               "if it comes in time, is kept in the state dir")
        return call.outcome()

    def _keep_late_answer(self, result: RefreshResultLike) -> None:
        # The loop has gone; the one thing that must not be lost is a rotated login.
        with contextlib.suppress(StoreError):
            self.ledger.save_last_good(result.credential)

    def _release(self, cred: Credential, now: float) -> None:
        try:
            self.journal.release(cred.refresh_token, now)
        except StoreError as exc:  # it stays marked as sent: never re-sent, at worst
            log.warning("cannot record that the refresh token was not spent: %s", exc)

    def _answered(self, cred: Credential, result: RefreshResultLike,
                  claim: Claim | None = None) -> Outcome:
        new = result.credential
        # Persisted before anything else: a successful answer is never discarded. A state dir
        # that refuses it (disk full) must not stop the stores, which are persistence too.
        try:
            self.ledger.save_last_good(new)
        except StoreError as exc:
            log.error("cannot save the new login in the state dir (%s); writing the stores",
                      exc)
        self.records.record_refresh(new, result.expires_in, self.clock.now())
        self._save()
        if self.peers is not None and claim is not None:
            # Before the local stores: the other machines wait for this, the sessions here
            # do not (the CLI locks are held until the stores are written).
            self.peers.sent(claim, new, result.expires_in)
        self.writer.round(new)
        log.info("refreshed %s -> %s (lifetime %.0f s)", cred.fingerprint, new.fingerprint,
                 result.expires_in)
        return Outcome(Kind.REFRESHED, new, f"new token {new.fingerprint}")

    def _refused(self, cred: Credential, now: float, said: str, why: str) -> Outcome:
        try:
            self.journal.reject(token_hash(cred.refresh_token), now)
        except StoreError as exc:
            log.warning("cannot record the refused login: %s", exc)
        again = self.verdict()  # re-read once: someone may have rotated meanwhile
        if again.winner is not None and not again.winner.same_tokens(cred):
            self.writer.round()
            return Outcome(Kind.ADOPTED, again.winner,
                           "the refresh was refused but a fresher login exists")
        log.error("refresh of %s refused (%s): a re-login is required", cred.fingerprint, why)
        return Outcome(Kind.RELOGIN, cred, said)

    def _lost(self, cred: Credential, now: float, why: str) -> Outcome:
        # The server may have rotated the token: sending it again would present a used token and
        # revoke the whole family. Say so, once, and never loop.
        reason = "the answer to a refresh was lost, so the login may have been rotated away"
        return self._refused(cred, now, reason, why)


class Stopping(LockError):
    """The agent was asked to stop while a refresh waited for a lock or an answer."""


def _acquire(lock: FileLock | MkdirLock, wait_s: float, pause: Pause) -> bool:
    """Take ``lock`` within ``wait_s``; False when a live credsync process keeps it for us."""
    deadline = time.monotonic() + wait_s
    mkdir = isinstance(lock, MkdirLock)
    while True:
        try:
            lock.acquire(0 if mkdir else max(0.0, min(LOCK_SLICE_S, deadline - time.monotonic())))
            return True
        except LockError:
            # The agent's guard (agent.locks.guard) holds the CLI's locks all the time; under
            # credsync's own refresh lock, that is the same as holding them ourselves.
            if mkdir and lockowner.held_by_live_credsync(lock.path):
                return False
            if time.monotonic() >= deadline:
                raise
        if pause(MKDIR_POLL_S if mkdir else 0):
            raise Stopping("stopped while waiting for a refresh lock")


class _Call:
    """One refresh request on its own thread. An answer that arrives after the loop gave up
    waiting goes to ``late``."""

    def __init__(self, fn: Callable[[], RefreshResultLike],
                 late: Callable[[RefreshResultLike], None]) -> None:
        self.done = threading.Event()
        self._fn, self._late = fn, late
        self._result: RefreshResultLike | None = None
        self._error: BaseException | None = None
        self._abandoned = False
        threading.Thread(target=self._run, name="credsync-refresh", daemon=True).start()

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as exc:  # handed to the waiting thread as it is
            self._error = exc
        self.done.set()
        if self._abandoned and self._result is not None:
            self._late(self._result)

    def abandon(self) -> None:
        self._abandoned = True
        if self.done.is_set() and self._result is not None:
            self._late(self._result)

    def outcome(self) -> RefreshResultLike:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


class BackoffLike(Protocol):
    def delay(self, attempt: int, retry_after_s: float | None = None) -> float: ...


LATE_S = 30.0  # a deadline missed by more than this was slept through


class RefreshDriver:
    """When the agent refreshes: tracks the deadline of the current login and the retries.

    The agent asks ``next_at()`` for its queue timeout and calls ``due(now)`` on every step.
    """

    def __init__(self, coordinator: Coordinator, backoff: BackoffLike) -> None:
        self.coordinator = coordinator
        self.backoff = backoff
        self.current: Credential | None = None
        self.deadline: float | None = None
        self.retry_at: float | None = None
        self.attempt = 0
        self.last: Outcome | None = None
        self.blocked_on: str | None = None  # fingerprint for which a re-login is required

    def observe(self, winner: Credential | None) -> None:
        """Called after every round with the winning credential."""
        if winner is None:
            self.current = self.deadline = self.retry_at = None
            return
        if self.current is not None and winner.same_tokens(self.current):
            return
        self.current, self.retry_at, self.attempt = winner, None, 0
        if self.blocked_on is not None and self.blocked_on != winner.fingerprint:
            self.blocked_on = None  # a new login: the user logged in again
        self.deadline = self.coordinator.deadline(winner)

    def clock_moved(self, delta: float) -> None:
        """The wall clock jumped by ``delta`` (back): a pending retry keeps its delay."""
        if self.retry_at is not None:
            self.retry_at += delta

    def next_at(self) -> float | None:
        if self.current is None or self.blocked_on == self.current.fingerprint:
            return None
        return self.retry_at if self.retry_at is not None else self.deadline

    def due(self, now: float, pause: Pause = no_pause) -> Outcome | None:
        """Refresh when due; None when nothing was due."""
        at = self.next_at()
        if at is None or now < at or self.current is None:
            return None
        if now - at > LATE_S:
            # Woken long after the deadline (a suspend): at once, no jitter. The herd is this
            # machine's own sessions, which wait on the CLI locks the guard holds for us.
            log.info("refresh due %.0f s ago (the machine slept?): refreshing now", now - at)
        outcome = self.coordinator.run(self.current, pause=pause)
        self.last = outcome
        self._after(outcome, now)
        return outcome

    def _after(self, outcome: Outcome, now: float) -> None:
        if outcome.kind is Kind.HELD:
            # Waiting on another machine (or on Redis): look again when the hold says, without
            # backing off further; a newer login from the cluster resets this anyway.
            self.retry_at = now + max(0.2, outcome.retry_after_s or 0.0)
            return
        if outcome.kind in (Kind.TRANSIENT, Kind.BUSY, Kind.STOPPED, Kind.BLOCKED):
            self.retry_at = now + self.backoff.delay(self.attempt, outcome.retry_after_s)
            self.attempt += 1
            return
        if outcome.kind is Kind.RELOGIN:
            self.blocked_on = self.current.fingerprint if self.current else None
            return
        self.attempt, self.retry_at = 0, None
        if outcome.credential is not None:
            self.current = None  # forces observe() to plan for the new credential
            self.observe(outcome.credential)
