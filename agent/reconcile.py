"""Deciding what every store should hold, and the one path along which stores are written.

``plan_round`` is pure: the winner comes from ``agent.winner.judge``; every store that differs
gets it, except:
- a deliberate logout is respected: a holder whose ``claudeAiOauth`` entry is gone, or whose
  file was removed after it held a login, is not written until the user logs in there again;
- a damaged holder (the CLI's cleared form, or garbage) is restored at most once with the same
  credential: cleared again means a session was refused that credential by the server, so
  restoring it again would only start a loop of rejected refreshes. Outputs (sinks) are never
  judged: a consumer that empties one is not a server refusal.

``Reconciler`` runs a round: read every store, plan, persist the winner, write. The agent's loop
and the refresh coordinator (inside its locks) both write through it, so every write records
the signature the loop uses to tell its own writes from anyone else's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from agent.clock import Clock
from agent.credential import Credential, Reading, ReadState
from agent.errors import StoreError
from agent.fsutil import stat_signature
from agent.ledger import Ledger, StoreMemory, token_hash
from agent.stores.base import Background, Role, Store
from agent.winner import Rules, Verdict, judge

log = logging.getLogger("credsync.agent")

# Unparsable content must stay unchanged this long before it is repaired. On Linux the loop
# also knows, from inotify's close-write, whether a writer still has the file open.
GARBAGE_GRACE_S = 0.5
# A document cut short (empty, or JSON that ends early) is what a write in progress looks like
# between two chunks (`ssh host cat ... > file` pauses as long as the network does): it gets a
# longer quiet period, and so does any garbage where close-write events are not seen.
PARTIAL_GRACE_S = 5.0
# A writer that keeps the file open this long with garbage in it is not coming back.
WRITER_MAX_S = 120.0
CLOSE_EVENTS = sys.platform.startswith("linux")


@dataclass
class Plan:
    verdict: Verdict
    writes: list[str] = field(default_factory=list)  # store names to write the winner to
    restores: list[str] = field(default_factory=list)  # of those, the damaged ones
    newly_rejected: list[str] = field(default_factory=list)  # refresh-token hashes
    logged_out: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # garbage still inside its grace time

    @property
    def winner(self) -> Credential | None:
        return self.verdict.winner


def plan_round(
    readings: Mapping[str, Reading],
    roles: Mapping[str, Role],
    memory: dict[str, StoreMemory],
    last_good: Credential | None,
    rules: Rules,
    settled: set[str] | None = None,
) -> Plan:
    """Decide one round. ``memory`` is updated in place; ``settled`` names garbage stores whose
    content has stayed the same long enough to be repaired (None: all of them)."""
    verdict = judge(readings, roles, memory, last_good, rules)
    plan = Plan(verdict, logged_out=list(verdict.logged_out))
    for name, reading in readings.items():
        mem = memory.setdefault(name, StoreMemory())
        _decide(name, reading, roles.get(name, Role.COPY), mem, plan, rules.now, settled)
    if plan.newly_rejected:
        # A credential the server refused may have been the winner: decide again without it.
        rejected = rules.rejected | set(plan.newly_rejected)
        again = plan_round(readings, roles, memory, last_good,
                           dataclasses.replace(rules, rejected=frozenset(rejected)), settled)
        again.newly_rejected = plan.newly_rejected + again.newly_rejected
        return again
    return plan


def _decide(name: str, reading: Reading, role: Role, mem: StoreMemory, plan: Plan, now: float,
            settled: set[str] | None) -> None:
    winner = plan.winner
    if reading.state is ReadState.VALID:
        if role is not Role.OUTPUT:
            mem.seen_valid, mem.logged_out_since = True, None
        assert reading.credential is not None
        if winner is not None and not _holds(reading.credential, winner):
            plan.writes.append(name)
        return
    if name in plan.verdict.logged_out:
        mem.logged_out_since = mem.logged_out_since or now
        return
    if winner is None or reading.state is ReadState.ERROR:
        return
    if reading.state is ReadState.MISSING or role is Role.OUTPUT:
        plan.writes.append(name)  # an output emptied or removed is simply written again
        return
    if reading.state is ReadState.INVALID and settled is not None and name not in settled:
        plan.waiting.append(name)
        return
    if reading.state is ReadState.CLEARED and role is Role.HOLDER and \
            winner.fingerprint in mem.restored_with:
        # Cleared again after we restored this very credential: the server refused it.
        plan.newly_rejected.append(token_hash(winner.refresh_token))
        return
    if reading.state is ReadState.CLEARED:
        mem.restored_with.append(winner.fingerprint)
    plan.writes.append(name)
    plan.restores.append(name)


def _holds(current: Credential, winner: Credential) -> bool:
    # Sinks read back only the access token; a full store must hold the very same document.
    if not current.refresh_token:
        return current.access_token == winner.access_token
    return current.same_tokens(winner)


@dataclass
class RoundReport:
    winner: Credential | None
    written: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    plan: Plan | None = None

    @property
    def verdict(self) -> Verdict | None:
        return self.plan.verdict if self.plan is not None else None


def roles_of(stores: Sequence[Store]) -> dict[str, Role]:
    return {s.name: s.role for s in stores}


class Reconciler:
    """One round of reading, deciding and writing; the only writer of the stores."""

    def __init__(self, stores: Sequence[Store], ledger: Ledger, clock: Clock,
                 max_lifetime_s: float = 86400.0, repair_garbage: bool = True,
                 foreign: Callable[[Credential], str | None] | None = None) -> None:
        self.stores = list(stores)
        # Why a valid login is not this scope's (a Codex home now on another account), else
        # None: such a store reads as an error, neither a candidate nor written.
        self.foreign = foreign
        self.ledger = ledger
        self.clock = clock
        self.max_lifetime_s = max_lifetime_s
        # One-shot commands never repair garbage: they cannot tell a write in progress.
        self.repair_garbage = repair_garbage
        self.roles = roles_of(self.stores)
        # Decided once: a runtime protocol check costs tens of microseconds each time.
        self.background = {s.name for s in self.stores if isinstance(s, Background)}
        self.memory: dict[str, StoreMemory] = ledger.load_memory()
        self.readings: dict[str, Reading] = {}
        self.own_writes: dict[Path, tuple[int, int, int] | None] = {}
        self.garbage_since: dict[str, tuple[float, str]] = {}
        self.garbage_at: dict[str, float] = {}  # when each store's garbage may be repaired
        self.writing: dict[Path, float] = {}  # files a writer has open (inotify), since when
        self.write_errors: dict[str, str] = {}
        self.writes = 0

    # ----- inputs ------------------------------------------------------------------------
    def read_all(self) -> dict[str, Reading]:
        # The keychain's read runs on its worker while the files are read here.
        started = {s.name: cast(Background, s).start_read() for s in self.stores
                   if s.name in self.background}
        readings = {s.name: started[s.name]() if s.name in started else s.read()
                    for s in self.stores}
        return readings if self.foreign is None else \
            {name: self._own(reading) for name, reading in readings.items()}

    def _own(self, reading: Reading) -> Reading:
        why = self.foreign(reading.valid) if self.foreign and reading.valid else None
        return reading if why is None else Reading(ReadState.ERROR, detail=why)

    def rules(self, now: float) -> Rules:
        view = self.ledger.journal.read()
        return Rules(now, self.max_lifetime_s, frozenset(view.rejected), frozenset(view.spent))

    def verdict(self, readings: Mapping[str, Reading] | None = None) -> Verdict:
        """The winner rule on what the stores hold now (or on ``readings``)."""
        readings = self.read_all() if readings is None else readings
        now = self.clock.now()
        return judge(readings, self.roles, self.memory, self.ledger.load_last_good(),
                     self.rules(now))

    # ----- writers in progress ------------------------------------------------------------
    def writer_active(self, path: Path, now: float) -> None:
        self.writing.setdefault(path, now)

    def writer_done(self, path: Path) -> None:
        self.writing.pop(path, None)

    def _grace(self, path: Path | None, reading: Reading, now: float) -> float:
        if path is not None and path in self.writing:
            if now - self.writing[path] < WRITER_MAX_S:
                return WRITER_MAX_S  # still open for writing: never replaced under a writer
            self.writing.pop(path, None)
        partial = reading.detail.startswith(("empty file", "truncated JSON"))
        return PARTIAL_GRACE_S if partial or not CLOSE_EVENTS else GARBAGE_GRACE_S

    def settled(self, readings: dict[str, Reading], now: float) -> set[str]:
        settled: set[str] = set()
        paths = {s.name: s.watch_path for s in self.stores}
        for name, reading in readings.items():
            if reading.state is not ReadState.INVALID:
                self.garbage_since.pop(name, None)
                self.garbage_at.pop(name, None)
                continue
            # Garbage that keeps changing is a write in progress (a slow writer, in place): the
            # grace starts again with every change, so a half-written file is never replaced.
            path = paths.get(name)
            seen = str(stat_signature(path)) if path is not None else reading.detail
            first, before = self.garbage_since.get(name, (now, seen))
            if before != seen:
                first = now
            self.garbage_since[name] = (first, seen)
            self.garbage_at[name] = first + self._grace(path, reading, now)
            if now >= self.garbage_at[name]:
                settled.add(name)
        return settled

    def next_garbage_check(self) -> float | None:
        """When garbage seen in a store is next due for repair (None: no garbage)."""
        return min(self.garbage_at.values(), default=None)

    def moved_clock(self, delta: float) -> None:
        self.garbage_since = {k: (t + delta, seen) for k, (t, seen) in self.garbage_since.items()}
        self.garbage_at = {k: t + delta for k, t in self.garbage_at.items()}

    # ----- a round -----------------------------------------------------------------------
    def round(self, fresh: Credential | None = None) -> RoundReport:
        """Read, decide, write. ``fresh`` is a refresh answer just received: a candidate even
        when the state dir could not keep it (a full disk must not cost the new login)."""
        now = self.clock.now()
        self.readings = readings = self.read_all()
        settled = self.settled(readings, now) if self.repair_garbage else set()
        last_good = self.ledger.load_last_good()
        rules = self.rules(now)
        if fresh is not None and rules.beats(fresh, last_good):
            last_good = fresh
        plan = plan_round(readings, self.roles, self.memory, last_good, rules, settled)
        for digest in plan.newly_rejected:
            try:
                self.ledger.journal.reject(digest, now)
            except StoreError as exc:
                log.warning("cannot record a refused login: %s", exc)
        report = RoundReport(plan.winner, plan=plan)
        if plan.winner is not None:
            self._apply(plan, plan.winner, report, last_good, rules)
        self.write_errors = dict(report.failed)
        try:
            self.ledger.save_memory(self.memory)  # a logout must outlive this process
        except StoreError as exc:
            log.warning("cannot save what credsync knows of the stores: %s", exc)
        return report

    def _apply(self, plan: Plan, winner: Credential, report: RoundReport,
               last_good: Credential | None, rules: Rules) -> None:
        if not winner.same_tokens(last_good):
            try:
                self.ledger.save_last_good(winner)
            except StoreError as exc:  # a full disk must not stop the stores being written
                log.warning("cannot save the last good login: %s", exc)
        by_name = {s.name: s for s in self.stores}
        # The keychain's writes start first and run on its worker while the files are written
        # here (a D-Bus round trip is mostly waiting); this loop waits for them before going on.
        started: list[tuple[Store, Callable[[], bool]]] = []
        for name in sorted(plan.writes, key=lambda n: n not in self.background):
            store = by_name[name]
            held = self.readings[name].valid if name in self.readings else None
            # What the store held when we decided, if the rule says the winner replaces it: the
            # store then writes unless someone put something else there since.
            supersedes = held if held is not None and rules.beats(winner, held) else None
            if name not in self.background:
                self._finish_write(store, functools.partial(store.write, winner, supersedes),
                                   plan, winner, report)
                continue
            try:
                started.append((store, cast(Background, store).start_write(winner, supersedes)))
            except StoreError as exc:
                self._write_failed(store, exc, report)
        for store, finish in started:
            self._finish_write(store, finish, plan, winner, report)

    def _write_failed(self, store: Store, exc: StoreError, report: RoundReport) -> None:
        report.failed[store.name] = str(exc)
        log.warning("%s: write failed: %s", store.name, exc)

    def _finish_write(self, store: Store, write: Callable[[], bool], plan: Plan,
                      winner: Credential, report: RoundReport) -> None:
        name = store.name
        try:
            changed = write()
        except StoreError as exc:
            self._write_failed(store, exc, report)
            return
        if store.watch_path is not None and changed:
            # What we put there, not what is there now: another writer may have replaced it
            # already, and its events must not pass for ours. Nothing is recorded when the store
            # was left alone: it may hold a fresher login someone just wrote, whose events must
            # bring the next round.
            self.own_writes[store.watch_path] = store.written or stat_signature(store.watch_path)
        if store.role is not Role.OUTPUT:
            # It holds a login now: its removal from here on is a logout, not a gap to fill.
            self.memory.setdefault(name, StoreMemory()).seen_valid = True
        if changed:
            self.writes += 1
            report.written.append(name)
            verb = "restored" if name in plan.restores else "updated"
            log.info("%s: %s to %s (expires %s)", name, verb, winner.fingerprint,
                     _iso(winner.expires_at))

    def is_own_write(self, path: Path) -> bool:
        expected = self.own_writes.get(path)
        return expected is not None and stat_signature(path) == expected


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
