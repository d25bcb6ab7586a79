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
import logging
import os
import random
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent.clock import Clock
from agent.credential import Credential, ReadState
from agent.errors import InvalidGrantError, LockError, StoreError, TransientRefreshError
from agent.filelock import FileLock
from agent.mkdirlock import MkdirLock, legacy_refresh_lock, oauth_refresh_lock
from agent.reconcile import choose_winner
from agent.state import Journal, StateDir, token_hash
from agent.stores.base import Store

if TYPE_CHECKING:  # pydantic stays out of `credsync token`'s start-up
    from agent.config import RefreshSection

log = logging.getLogger("credsync.refresh")

CLI_LOCK_WAIT_S = 10.0
MIN_INTERVAL_S = 10.0  # never refresh again sooner than this after our own refresh...
MIN_INTERVAL_FRACTION = 0.25  # ...or than this fraction of the lifetime, when that is shorter
REFRESH_FILE = "refresh.json"
JOURNAL_FILE = "journal"


class RefreshResultLike(Protocol):
    @property
    def credential(self) -> Credential: ...
    @property
    def expires_in(self) -> float: ...


class Refresher(Protocol):
    def refresh(self, cred: Credential) -> RefreshResultLike: ...


@dataclass(frozen=True)
class Outcome:
    kind: str  # refreshed | adopted | not-due | transient | relogin-required | busy | none
    credential: Credential | None = None
    message: str = ""
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.kind in ("refreshed", "adopted", "not-due")


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
        if last_refresh_at is not None:
            # A misconfiguration never loops. The floor shrinks with the lifetime: a fixed 10 s
            # after a refresh of a token that lives only seconds would let it expire first.
            floor = min(MIN_INTERVAL_S, lifetime_s * MIN_INTERVAL_FRACTION)
            due = max(due, last_refresh_at + floor)
        return due


class RefreshState:
    """``refresh.json``: lifetime, last refresh, auth state, rejected tokens (hashes only)."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.data = state.load_json(REFRESH_FILE)

    def reload(self) -> None:
        self.data = self.state.load_json(REFRESH_FILE)

    def save(self) -> None:
        try:
            self.state.save_json(REFRESH_FILE, self.data)
        except StoreError as exc:
            log.warning("cannot save refresh state: %s", exc)

    @property
    def salt(self) -> str:
        return self.ensure_salt()

    def ensure_salt(self) -> str:
        """The install's jitter salt, drawn and saved on first use."""
        if not isinstance(self.data.get("salt"), str):
            self.data["salt"] = secrets.token_hex(8)
            self.save()
        return str(self.data["salt"])

    @property
    def lifetime_s(self) -> float | None:
        value = self.data.get("lifetime_s")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def refreshed_at(self) -> float | None:
        value = self.data.get("refreshed_at")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def rejected(self) -> set[str]:
        value = self.data.get("rejected", [])
        return {str(x) for x in value} if isinstance(value, list) else set()

    def add_rejected(self, refresh_token: str) -> None:
        self.data["rejected"] = sorted(self.rejected | {token_hash(refresh_token)})[-64:]

    @property
    def auth(self) -> dict[str, object]:
        value = self.data.get("auth")
        return value if isinstance(value, dict) else {"state": "ok"}

    def set_auth(self, state: str, now: float, reason: str = "",
                 fingerprint: str | None = None) -> None:
        if self.auth.get("state") != state or self.auth.get("fingerprint") != fingerprint:
            self.data["auth"] = {"state": state, "since": now, "reason": reason,
                                 "fingerprint": fingerprint}

    def record_refresh(self, cred: Credential, expires_in: float, now: float) -> None:
        self.data.update(lifetime_s=expires_in, refreshed_at=now, fingerprint=cred.fingerprint)
        self.set_auth("ok", now, fingerprint=cred.fingerprint)


class Coordinator:
    def __init__(
        self,
        section: RefreshSection,
        stores: Sequence[Store],
        config_dirs: Sequence[Path],
        state: StateDir,
        refresher: Refresher,
        clock: Clock,
        lock_wait_s: float | None = None,
        cli_lock_wait_s: float = CLI_LOCK_WAIT_S,
    ) -> None:
        self.section = section
        self.stores = list(stores)
        self.config_dirs = list(config_dirs)
        self.state = state
        self.refresher = refresher
        self.clock = clock
        self.records = RefreshState(state)
        self.schedule = Schedule(section, self.records.salt)
        self.journal = Journal(state.file(JOURNAL_FILE))
        self.lock = FileLock(state.file("refresh.lock"))
        # Long enough for another credsync process to finish its whole refresh.
        self.lock_wait_s = lock_wait_s if lock_wait_s is not None else section.timeout_s * 2 + 15
        self.cli_lock_wait_s = cli_lock_wait_s

    # ----- reading -----------------------------------------------------------------------
    def best(self) -> Credential | None:
        """The freshest valid credential in any store or the last-good copy, not rejected."""
        candidates = [r.valid for s in self.stores if s.is_source and (r := s.read()).valid]
        last_good = self.state.load_last_good()
        if last_good is not None:
            candidates.append(last_good)
        return choose_winner(candidates, self.records.rejected, self.journal.spent())

    def deadline(self, cred: Credential) -> float:
        lifetime, _ = self.schedule.lifetime(self.records.lifetime_s)
        return self.schedule.deadline(cred, lifetime, self.records.refreshed_at)

    # ----- locks -------------------------------------------------------------------------
    def cli_locks(self) -> list[MkdirLock]:
        dirs = sorted({Path(os.path.realpath(d)) for d in self.config_dirs if d.is_dir()})
        return [*(oauth_refresh_lock(d, marked=True) for d in dirs),
                *(legacy_refresh_lock(d, marked=True) for d in dirs)]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.lock.hold(self.lock_wait_s))
            for lock in self.cli_locks():
                stack.enter_context(lock.hold(self.cli_lock_wait_s))
            yield

    # ----- refreshing --------------------------------------------------------------------
    def run(self, seen: Credential | None = None, force: bool = False) -> Outcome:
        """One refresh decision under every lock; ``seen`` is the credential we meant to redeem."""
        try:
            with self.locked():
                self.records.reload()
                outcome = self._locked(seen, force)
                self.records.save()
                return outcome
        except LockError as exc:
            return Outcome("busy", seen, str(exc), retry_after_s=5.0)

    def _locked(self, seen: Credential | None, force: bool) -> Outcome:
        now = self.clock.now()
        best = self.best()
        if best is None:
            self.records.set_auth("relogin-required", now, "no valid login in any store")
            return Outcome("relogin-required", None, "no valid login in any store")
        if seen is not None and best.fresher_than(seen) and not best.same_tokens(seen):
            self._write_stores(best)
            return Outcome("adopted", best, "another process had refreshed already")
        if not force and now < self.deadline(best):
            return Outcome("not-due", best, "not due yet")
        return self._redeem(best, now)

    def _redeem(self, cred: Credential, now: float) -> Outcome:
        if cred.refresh_token in self.journal:
            return self._lost(cred, now, "its refresh token was sent before and the answer is "
                                         "unknown (credsync stopped or the answer was lost)")
        prepare = getattr(self.refresher, "prepare", None)
        if callable(prepare):
            prepare()  # build the HTTP client first: journal-to-send must be as short as can be
        try:
            self.journal.record(cred.refresh_token)
        except (OSError, StoreError) as exc:
            # Unrecorded, it could be sent twice after a crash: send nothing (disk full).
            log.warning("cannot record the refresh in the journal (%s); not refreshing", exc)
            return Outcome("transient", cred, f"cannot write the journal: {exc}")
        log.info("refreshing %s (expires %.0f s from now)", cred.fingerprint,
                 cred.expires_at - now)
        try:
            result = self.refresher.refresh(cred)
        except InvalidGrantError as exc:
            return self._rejected(cred, now, str(exc))
        except TransientRefreshError as exc:
            if exc.may_have_rotated:
                return self._lost(cred, now, str(exc))
            self.journal.release(cred.refresh_token)
            state = "offline" if cred.expires_at <= now else "retrying"
            self.records.set_auth(state, now, str(exc), cred.fingerprint)
            return Outcome("transient", cred, str(exc), exc.retry_after_s)
        new = result.credential
        # Persisted before anything else: a successful answer is never discarded. A state dir
        # that refuses it (disk full) must not stop the stores, which are persistence too.
        try:
            self.state.save_last_good(new)
        except StoreError as exc:
            log.error("cannot save the new login in the state dir (%s); writing the stores",
                      exc)
        self.records.record_refresh(new, result.expires_in, self.clock.now())
        self.records.save()
        self._write_stores(new)
        log.info("refreshed %s -> %s (lifetime %.0f s)", cred.fingerprint, new.fingerprint,
                 result.expires_in)
        return Outcome("refreshed", new, f"new token {new.fingerprint}")

    def _rejected(self, cred: Credential, now: float, why: str) -> Outcome:
        self.records.add_rejected(cred.refresh_token)
        again = self.best()  # re-read once: someone may have rotated meanwhile
        if again is not None and not again.same_tokens(cred):
            self._write_stores(again)
            return Outcome("adopted", again, "the refresh was refused but a fresher login exists")
        said = "the token server refused the refresh token"
        self.records.set_auth("relogin-required", now, said, cred.fingerprint)
        log.error("refresh of %s refused (%s): a re-login is required", cred.fingerprint, why)
        return Outcome("relogin-required", cred, said)

    def _lost(self, cred: Credential, now: float, why: str) -> Outcome:
        # The server may have rotated the token: sending it again would present a used token and
        # revoke the whole family. Say so, once, and never loop.
        self.records.add_rejected(cred.refresh_token)
        again = self.best()
        if again is not None and not again.same_tokens(cred):
            self._write_stores(again)
            return Outcome("adopted", again, "a fresher login exists")
        reason = "the answer to a refresh was lost, so the login may have been rotated away"
        self.records.set_auth("relogin-required", now, reason, cred.fingerprint)
        log.error("%s: %s (%s); a re-login is required", cred.fingerprint, reason, why)
        return Outcome("relogin-required", cred, reason)

    def _write_stores(self, cred: Credential) -> None:
        for store in self.stores:
            reading = store.read()
            # Stores that hold a login get the new one; credsync's own copies too. Logged-out,
            # cleared and missing CLI stores are the agent's decision, not the refresher's.
            if reading.state is not ReadState.VALID and store.kind == "claude-file":
                continue
            held = reading.valid
            spent = held is not None and held.refresh_token in self.journal
            try:
                store.write(cred, held if spent else None)
            except StoreError as exc:
                log.warning("%s: write failed after refresh: %s", store.name, exc)


class BackoffLike(Protocol):
    def delay(self, attempt: int, retry_after_s: float | None = None) -> float: ...


STAMPEDE_DELAY_S = (1.0, 10.0)  # after a suspend, wait this long (random) before refreshing


class RefreshDriver:
    """When the agent refreshes: tracks the deadline of the current login and the retries.

    The agent asks ``next_at()`` for its queue timeout and calls ``due(now)`` on every step.
    """

    def __init__(self, coordinator: Coordinator, backoff: BackoffLike,
                 rng: random.Random | None = None) -> None:
        self.coordinator = coordinator
        self.backoff = backoff
        self.rng = rng or random.Random()
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

    def due(self, now: float) -> Outcome | None:
        """Refresh when due; None when nothing was due."""
        at = self.next_at()
        if at is None or now < at or self.current is None:
            return None
        if self.retry_at is None and now - at > 30.0:
            # Woken long after the deadline (a suspend): every machine and agent sharing this
            # login woke too; a short random delay keeps them from stampeding the server.
            self.retry_at = now + self.rng.uniform(*STAMPEDE_DELAY_S)
            return None
        outcome = self.coordinator.run(self.current)
        self.last = outcome
        self._after(outcome, now)
        return outcome

    def _after(self, outcome: Outcome, now: float) -> None:
        if outcome.kind in ("transient", "busy"):
            self.retry_at = now + self.backoff.delay(self.attempt, outcome.retry_after_s)
            self.attempt += 1
            return
        if outcome.kind == "relogin-required":
            self.blocked_on = self.current.fingerprint if self.current else None
            return
        self.attempt, self.retry_at = 0, None
        if outcome.credential is not None:
            self.current = None  # forces observe() to plan for the new credential
            self.observe(outcome.credential)
