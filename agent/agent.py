"""The agent: one loop that owns every side effect.

The watchdog thread and the signal handlers only put events on ``events``; the queue's timeout
is the scheduler. Deadlines are wall-clock and re-checked at least every ``TICK_S``, because a
monotonic clock stops while the machine sleeps.
"""

from __future__ import annotations

import functools
import logging
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from agent.alerting import Alerting, observation
from agent.clock import Clock
from agent.credential import Credential, Reading, ReadState
from agent.errors import StoreError
from agent.fsutil import remove_stale_temps, stat_signature, write_target
from agent.reconcile import Plan, StoreMemory, plan_round
from agent.refresh import RefreshDriver
from agent.state import StateDir, token_hash
from agent.stores.base import Background, Store
from agent.watcher import DirsChanged, FileChanged

log = logging.getLogger("credsync.agent")

TICK_S = 30.0  # wall-clock deadlines are re-checked at least this often
AUDIT_S = 60.0  # a full round even without events: keychains are not watched
GARBAGE_GRACE_S = 0.5  # unparsable content must stay unchanged this long before it is repaired
RETRY_MIN_S = 1.0  # a failed write or an unreadable store: next round after 1, 2, 4 ... AUDIT_S
CLOCK_BACK_S = 1.0  # the wall clock went back by more than this: deadlines move back with it
STALE_TEMP_S = 60.0  # a temp file of an interrupted write this old is abandoned (writes take ms)


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class Wake:
    """Nothing happened; check deadlines (used by tests and by the refresh work)."""


class WatcherLike(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def sync(self) -> bool: ...


@dataclass
class RoundReport:
    winner: Credential | None
    written: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    plan: Plan | None = None


class Agent:
    def __init__(
        self,
        stores: Sequence[Store],
        state: StateDir,
        clock: Clock,
        events: queue.Queue[object],
        watcher: WatcherLike | None = None,
        debounce_s: float = 0.01,
        on_round: Callable[[RoundReport], None] | None = None,
        refresh: RefreshDriver | None = None,
        alerting: Alerting | None = None,
    ) -> None:
        self.stores = list(stores)
        # Decided once: a runtime protocol check costs tens of microseconds each time.
        self.background = {s.name for s in self.stores if isinstance(s, Background)}
        # Where removing the login is the user logging out: the CLI's own stores. credsync's own
        # keychain item and the sinks are copies, refilled whenever they go missing.
        self.logout_aware = {s.name for s in self.stores if s.kind == "claude-file"
                             or getattr(s, "service", "").startswith("Claude Code-credentials")}
        self.state = state
        self.clock = clock
        self.events = events
        self.watcher = watcher
        self.debounce_s = debounce_s
        self.on_round = on_round
        self.refresh = refresh
        self.alerting = alerting
        self.config_dirs = {s.name: str(d) for s in self.stores
                            if (d := getattr(s, "config_dir", None)) is not None}
        self.memory: dict[str, StoreMemory] = {}
        self.rejected: set[str] = set()
        self.readings: dict[str, Reading] = {}
        self.own_writes: dict[Path, tuple[int, int, int] | None] = {}
        self.garbage_since: dict[str, tuple[float, str]] = {}
        self.write_errors: dict[str, str] = {}
        self.rounds = 0
        self.writes = 0
        self.stopping: str | None = None
        self._dirty = False
        self._due: float | None = None
        self._next_audit = 0.0
        self._last_report: RoundReport | None = None
        self._retry_at: float | None = None
        self._retries = 0
        self._last_now: float | None = None

    # ----- persistence -------------------------------------------------------------------
    def load(self) -> None:
        saved = self.state.load_json("agent.json")
        mem = saved.get("stores", {})
        if isinstance(mem, dict):
            self.memory = {str(k): StoreMemory.from_json(v) for k, v in mem.items()
                           if isinstance(v, dict)}
        rejected = saved.get("rejected", [])
        if isinstance(rejected, list):
            self.rejected = {str(x) for x in rejected}

    def save(self, extra: dict[str, object] | None = None) -> None:
        obj: dict[str, object] = {
            "stores": {k: v.to_json() for k, v in self.memory.items()},
            "rejected": sorted(self.rejected)[-64:],
            "readings": {n: {"state": r.state.value, "detail": r.detail}
                         for n, r in self.readings.items()},
            "updated_at": self.clock.now(),
            "rounds": self.rounds,
            "writes": self.writes,
            "write_errors": self.write_errors,
        }
        obj.update(extra or {})
        try:
            self.state.save_json("agent.json", obj)
        except StoreError as exc:
            log.warning("cannot save state: %s", exc)

    # ----- one round ---------------------------------------------------------------------
    def read_all(self) -> dict[str, Reading]:
        # The keychain's read runs on its worker while the files are read here.
        started = {s.name: cast(Background, s).start_read() for s in self.stores
                   if s.name in self.background}
        return {s.name: started[s.name]() if s.name in started else s.read()
                for s in self.stores}

    def _settled(self, readings: dict[str, Reading], now: float) -> set[str]:
        settled: set[str] = set()
        paths = {s.name: s.watch_path for s in self.stores}
        for name, reading in readings.items():
            if reading.state is not ReadState.INVALID:
                self.garbage_since.pop(name, None)
                continue
            # Garbage that keeps changing is a write in progress (a slow writer, in place): the
            # grace starts again with every change, so a half-written file is never replaced.
            path = paths.get(name)
            seen = str(stat_signature(path)) if path is not None else reading.detail
            first, before = self.garbage_since.get(name, (now, seen))
            if before != seen:
                first = now
            self.garbage_since[name] = (first, seen)
            if now - first >= GARBAGE_GRACE_S:
                settled.add(name)
        return settled

    def reconcile(self) -> RoundReport:
        now = self.clock.now()
        self.readings = readings = self.read_all()
        sources = {s.name for s in self.stores if s.is_source}
        settled = self._settled(readings, now)
        rejected = set(self.rejected)
        if self.refresh is not None:
            self.refresh.coordinator.records.reload()
            rejected |= self.refresh.coordinator.records.rejected
        last_good = self.state.load_last_good()
        spent = self.refresh.coordinator.journal.spent() if self.refresh is not None else set()
        plan = plan_round(readings, sources, self.memory, last_good,
                          rejected, now, settled, self.logout_aware, spent)
        self.rejected |= rejected - self._server_rejected()
        report = RoundReport(plan.winner, plan=plan)
        if plan.winner is not None:
            self._apply(plan, plan.winner, report, spent)
        self._schedule_retry(report, readings, now)
        if self.refresh is not None:
            self.refresh.observe(plan.winner)
        if self.alerting is not None:
            auth = self.refresh.coordinator.records.auth if self.refresh is not None else {}
            self.alerting.observe(observation(plan.winner, readings, self.config_dirs,
                                              plan.logged_out, auth, last_good, now))
        self.rounds += 1
        self._next_audit = now + AUDIT_S
        self._last_report = report
        self.save()
        if self.on_round:
            self.on_round(report)
        return report

    def _schedule_retry(self, report: RoundReport, readings: dict[str, Reading],
                        now: float) -> None:
        # A store that could not be written (disk full, permission denied, a busy lock) or read
        # (keychain locked or gone) is tried again soon, backing off to the audit period: it
        # comes back by itself, without waiting for the next write elsewhere.
        self.write_errors = dict(report.failed)
        troubled = report.failed or any(r.state is ReadState.ERROR for r in readings.values())
        if not troubled:
            self._retry_at, self._retries = None, 0
            return
        self._retry_at = now + min(AUDIT_S, RETRY_MIN_S * 2.0 ** min(self._retries, 16))
        self._retries += 1

    def _server_rejected(self) -> set[str]:
        return self.refresh.coordinator.records.rejected if self.refresh is not None else set()

    def _apply(self, plan: Plan, winner: Credential, report: RoundReport,
               spent: set[str]) -> None:
        if not winner.same_tokens(self.state.load_last_good()):
            try:
                self.state.save_last_good(winner)
            except StoreError as exc:  # a full disk must not stop the stores being written
                log.warning("cannot save the last good login: %s", exc)
        by_name = {s.name: s for s in self.stores}
        # The keychain's writes start first and run on its worker while the files are written
        # here (a D-Bus round trip is mostly waiting); this loop waits for them before going on.
        started: list[tuple[Store, Callable[[], bool]]] = []
        for name in sorted(plan.writes, key=lambda n: n not in self.background):
            store = by_name[name]
            held = self.readings[name].valid if name in self.readings else None
            # A credential whose refresh token was already redeemed is superseded by the
            # winner even if it claims a later expiry (the server shortened the lifetime).
            supersedes = held if held and token_hash(held.refresh_token) in spent else None
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
            written = getattr(store, "written", None)
            self.own_writes[store.watch_path] = written or stat_signature(store.watch_path)
        # It holds a login now: its removal from here on is a logout, not a gap to fill.
        self.memory[name].seen_valid = True
        if changed:
            self.writes += 1
            report.written.append(name)
            verb = "restored" if name in plan.restores else "updated"
            log.info("%s: %s to %s (expires %s)", name, verb, winner.fingerprint,
                     _iso(winner.expires_at))

    def recover(self) -> None:
        """Clean up after a credsync process that was killed (at start and on every audit)."""
        # A lock it held stays behind: free it now rather than block every session until its
        # stale time (agent.lockowner).
        for store in self.stores:
            release = getattr(store, "release_orphaned_locks", None)
            if callable(release):
                for path in release():
                    log.warning("removed lock %s left by a credsync process that died", path)
        # A write it had begun leaves a temp file, which may hold a token.
        places: dict[Path, set[str] | None] = {self.state.path: None}
        for store in self.stores:
            if store.watch_path is not None:
                target = write_target(store.watch_path)
                names = places.setdefault(target.parent, set())
                if names is not None:
                    names.add(target.name)
        for directory, names in places.items():
            for path in remove_stale_temps(directory, STALE_TEMP_S, names):
                log.info("removed %s, left by an interrupted write", path)

    # ----- the loop ----------------------------------------------------------------------
    def _is_own_write(self, path: Path) -> bool:
        expected = self.own_writes.get(path)
        return expected is not None and stat_signature(path) == expected

    def handle(self, event: object) -> None:
        now = self.clock.now()
        if isinstance(event, Stop):
            self.stopping = event.reason
        elif isinstance(event, FileChanged):
            if not self._is_own_write(event.path):
                self._mark_dirty(now, 0.0 if event.complete else self.debounce_s)
        elif isinstance(event, DirsChanged):
            if self.watcher is not None:
                self.watcher.sync()
            self._mark_dirty(now)

    def _mark_dirty(self, now: float, delay: float | None = None) -> None:
        due = now + (self.debounce_s if delay is None else delay)
        if not self._dirty:
            self._dirty = True
            self._due = due
        elif self._due is not None and due < self._due:
            self._due = due  # a finished write needs no more waiting for the burst to end

    def next_timeout(self) -> float:
        now = self.clock.now()
        deadlines = [self._next_audit]
        if self._due is not None:
            deadlines.append(self._due)
        if self._retry_at is not None:
            deadlines.append(self._retry_at)
        if self.garbage_since:
            deadlines.append(min(t for t, _ in self.garbage_since.values()) + GARBAGE_GRACE_S)
        refresh_at = self.refresh.next_at() if self.refresh is not None else None
        if refresh_at is not None:
            deadlines.append(refresh_at)
        return max(0.0, min(min(deadlines) - now, TICK_S))

    def _follow_clock(self, now: float) -> None:
        # The wall clock went back (a correction, a manual change): every deadline set before
        # is that much further away than meant. Move them back with it, or the audit, a retry
        # and a garbage repair would all wait for the clock to catch up.
        if self._last_now is not None and now < self._last_now - CLOCK_BACK_S:
            delta = now - self._last_now
            log.warning("the clock went back %.0f s", -delta)
            self._next_audit += delta
            self._due = None if self._due is None else self._due + delta
            self._retry_at = None if self._retry_at is None else self._retry_at + delta
            self.garbage_since = {k: (t + delta, seen)
                                  for k, (t, seen) in self.garbage_since.items()}
            if self.refresh is not None:
                self.refresh.clock_moved(delta)
        self._last_now = now

    def due_work(self) -> None:
        now = self.clock.now()
        self._follow_clock(now)
        garbage_due = any(now - t >= GARBAGE_GRACE_S for t, _ in self.garbage_since.values())
        retry_due = self._retry_at is not None and now >= self._retry_at
        if now >= self._next_audit:
            self.recover()
        if (self._dirty and self._due is not None and now >= self._due) or \
                now >= self._next_audit or garbage_due or retry_due:
            self._dirty, self._due = False, None
            if self.watcher is not None and self.watcher.sync():
                log.debug("watches re-aimed")
            self.reconcile()
        if self.refresh is not None:
            outcome = self.refresh.due(self.clock.now())
            if outcome is not None:
                log.info("refresh: %s (%s)", outcome.kind, outcome.message)
                if outcome.kind in ("refreshed", "adopted", "relogin-required"):
                    # The stores the refresher left alone get the new login; a refused one is
                    # dropped from the contest, and the user is told when nothing is left.
                    self.reconcile()

    def step(self, timeout: float | None = None) -> None:
        """Wait for one event (or the next deadline), handle it, then do what is due."""
        wait = self.next_timeout() if timeout is None else timeout
        try:
            event = self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait()
        except queue.Empty:
            event = None
        if event is not None:
            self.handle(event)
            # Drain what is already queued so that a burst costs one round.
            while True:
                try:
                    self.handle(self.events.get_nowait())
                except queue.Empty:
                    break
        if self.stopping is None:
            self.due_work()

    def run(self) -> str:
        if self.watcher is not None:
            self.watcher.start()
        try:
            self.recover()
            self.reconcile()
            while self.stopping is None:
                self.step()
        finally:
            if self.watcher is not None:
                self.watcher.stop()
            self.save({"stopped_at": self.clock.now()})
        return self.stopping or "stopped"


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
