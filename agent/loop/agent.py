"""The agent: one loop that owns every side effect.

The watchdog thread and the signal handlers only put events on ``events``; the queue's timeout
is the scheduler. Deadlines are wall-clock and re-checked at least every ``TICK_S``, because a
monotonic clock stops while the machine sleeps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.clock import Clock
from agent.credential import Reading, ReadState
from agent.errors import StoreError
from agent.fsutil import remove_stale_temps, write_target
from agent.ledger import Ledger, StoreMemory
from agent.locks.guard import CliLockGuard
from agent.loop.watcher import DirsChanged, FileChanged
from agent.notify.alerting import Alerting, observation
from agent.notify.alerts import AuthObservation
from agent.reconcile import GARBAGE_GRACE_S, Reconciler, RoundReport
from agent.refresh.coordinator import Kind, RefreshDriver
from agent.stores.base import Role, Store
from agent.winner import Verdict

__all__ = ["AUDIT_S", "GARBAGE_GRACE_S", "TICK_S", "Agent", "RoundReport", "Stop", "Wake"]

log = logging.getLogger("credsync.agent")

TICK_S = 30.0  # wall-clock deadlines are re-checked at least this often
AUDIT_S = 60.0  # a full round even without events: keychains are not watched
RETRY_MIN_S = 1.0  # a failed write or an unreadable store: next round after 1, 2, 4 ... AUDIT_S
CLOCK_BACK_S = 1.0  # the wall clock went back by more than this: deadlines move back with it
CLI_WINDOW_S = 300.0  # the CLI refreshes when its token has less than this left
WOKE_LATE_S = 5.0  # a heartbeat this late: the machine slept (or the loop was stopped)
STALE_TEMP_S = 60.0  # a temp file of an interrupted write this old is abandoned (writes take ms)


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class Wake:
    """Nothing happened; check deadlines (used by tests and by the refresh work)."""


class Companion(Protocol):
    """A part with events and deadlines of its own on the loop (the cluster node): its
    thread puts events on the queue; ``handle`` only records one, ``due`` does the work."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def owns(self, event: object) -> bool: ...
    def handle(self, event: object) -> bool: ...  # True: a round should follow
    def next_at(self) -> float: ...
    def due(self, now: float) -> bool: ...  # True: a round should follow
    def clock_moved(self, delta: float) -> None: ...
    def holding(self, now: float) -> tuple[str, float] | None: ...  # why, since when
    def flush(self) -> None: ...  # save its own records, after the round


class WatcherLike(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def sync(self) -> bool: ...


class Agent:
    def __init__(
        self,
        stores: Sequence[Store],
        ledger: Ledger,
        clock: Clock,
        events: queue.Queue[object],
        watcher: WatcherLike | None = None,
        debounce_s: float = 0.01,
        on_round: Callable[[RoundReport], None] | None = None,
        refresh: RefreshDriver | None = None,
        alerting: Alerting | None = None,
        writer: Reconciler | None = None,
        guard: CliLockGuard | None = None,
        cluster: Companion | None = None,
    ) -> None:
        if writer is None:
            # The refresh coordinator writes the stores inside its locks: through the very same
            # writer, so that its writes are recognised as ours too.
            writer = refresh.coordinator.writer if refresh is not None else \
                Reconciler(stores, ledger, clock)
        self.writer = writer
        self.stores = writer.stores
        self.ledger = ledger
        self.clock = clock
        self.events = events
        self.watcher = watcher
        self.debounce_s = debounce_s
        self.on_round = on_round
        self.refresh = refresh
        self.alerting = alerting
        self.guard = guard
        self.cluster = cluster
        # Where an event read while a refresh waits goes: this agent alone, or, when several
        # providers share one loop (agent.loop.lanes), every one of them.
        self.dispatch: Callable[[object], None] = self.handle
        self.config_dirs = {s.name: str(s.session_dir) for s in self.stores
                            if s.session_dir is not None}
        self.rounds = 0
        self.stopping: str | None = None
        self._dirty = False
        self._due: float | None = None
        self._next_audit = 0.0
        self._last_report: RoundReport | None = None
        self._retry_at: float | None = None
        self._retries = 0
        self._last_now: float | None = None
        # Stores nobody can watch (a macOS Keychain item): a cheap change check this often.
        self.polled = [s for s in self.stores if s.poll_s is not None]
        self._next_poll = 0.0

    # The writer's state, as the loop's (tests and status read these).
    @property
    def memory(self) -> dict[str, StoreMemory]:
        return self.writer.memory

    @property
    def readings(self) -> dict[str, Reading]:
        return self.writer.readings

    @property
    def own_writes(self) -> dict[Path, tuple[int, int, int] | None]:
        return self.writer.own_writes

    @property
    def writes(self) -> int:
        return self.writer.writes

    @property
    def garbage_since(self) -> dict[str, tuple[float, str]]:
        return self.writer.garbage_since

    # ----- persistence -------------------------------------------------------------------
    def load(self) -> None:
        self.writer.memory = self.ledger.load_memory()

    def save(self, extra: dict[str, object] | None = None) -> None:
        report = self._last_report
        verdict = report.verdict if report is not None else None
        obj: dict[str, object] = {
            "readings": {n: {"state": r.state.value, "detail": r.detail}
                         for n, r in self.readings.items()},
            "login": verdict.state.value if verdict is not None else None,
            "updated_at": self.clock.now(),
            "pid": os.getpid(),
            "rounds": self.rounds,
            "writes": self.writes,
            "write_errors": self.writer.write_errors,
        }
        obj.update(extra or {})
        try:
            self.ledger.save_agent(obj)
        except StoreError as exc:
            log.warning("cannot save state: %s", exc)

    # ----- one round ---------------------------------------------------------------------
    def reconcile(self) -> RoundReport:
        now = self.clock.now()
        report = self.writer.round()
        self._schedule_retry(report, self.readings, now)
        if self.refresh is not None:
            self.refresh.observe(report.winner)
        if self.guard is not None:
            # The CLI's refresh locks are held while there is a login to keep, so that sessions
            # waking with an expired token wait for credsync instead of racing each other.
            if report.winner is not None and not self._holder_blocked():
                self.guard.hold(now)
            else:
                self.guard.release()
        self._alert(report, now)
        self.rounds += 1
        self._next_audit = now + AUDIT_S
        self._last_report = report
        self.save()
        if self.on_round:
            self.on_round(report)
        return report

    def _alert(self, report: RoundReport, now: float) -> None:
        if self.alerting is not None and report.verdict is not None:
            self.alerting.observe(self._observation(report.verdict, report, now))

    def _observation(self, verdict: Verdict, report: RoundReport, now: float) -> AuthObservation:
        obs = observation(verdict, self.config_dirs, now)
        held = self.cluster.holding(now) if self.cluster is not None else None
        if held is None or report.winner is None:
            return obs
        due = self.refresh.deadline if self.refresh is not None else None
        return dataclasses.replace(obs, held=held[0], held_since=held[1], due_at=due,
                                   expires_at=report.winner.expires_at)

    def _holder_blocked(self) -> bool:
        # credsync will not refresh this login (a store only the CLI may keep): the CLI's
        # sessions must be free to take their own refresh lock.
        return any(s.role is Role.HOLDER and s.write_blocker() is not None for s in self.stores)

    def _schedule_retry(self, report: RoundReport, readings: dict[str, Reading],
                        now: float) -> None:
        # A store that could not be written (disk full, permission denied, a busy lock) or read
        # (keychain locked or gone) is tried again soon, backing off to the audit period: it
        # comes back by itself, without waiting for the next write elsewhere.
        troubled = report.failed or any(r.state is ReadState.ERROR for r in readings.values())
        if not troubled:
            self._retry_at, self._retries = None, 0
            return
        self._retry_at = now + min(AUDIT_S, RETRY_MIN_S * 2.0 ** min(self._retries, 16))
        self._retries += 1

    def recover(self) -> None:
        """Clean up after a credsync process that was killed (at start and on every audit)."""
        # A lock it held stays behind: free it now rather than block every session until its
        # stale time (agent.locks.owner).
        for store in self.stores:
            for path in store.release_orphaned_locks():
                log.warning("removed lock %s left by a credsync process that died", path)
        # A write it had begun leaves a temp file, which may hold a token.
        places: dict[Path, set[str] | None] = {self.ledger.path: None, self.ledger.root: None}
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
    def handle(self, event: object) -> None:
        now = self.clock.now()
        if isinstance(event, Stop):
            self.stopping = event.reason
        elif self.cluster is not None and self.cluster.owns(event):
            if self.cluster.handle(event):
                self._mark_dirty(now, 0.0)  # another machine's login: to the stores at once
        elif isinstance(event, FileChanged):
            if event.writing:
                self.writer.writer_active(event.path, now)
            elif event.complete:
                self.writer.writer_done(event.path)
            if not self.writer.is_own_write(event.path):
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
        garbage_at = self.writer.next_garbage_check()
        if garbage_at is not None:
            deadlines.append(garbage_at)
        refresh_at = self.refresh.next_at() if self.refresh is not None else None
        if refresh_at is not None:
            deadlines.append(refresh_at)
        beat_at = self.guard.next_beat() if self.guard is not None else None
        if beat_at is not None:
            deadlines.append(beat_at)
        if self.polled:
            deadlines.append(self._next_poll)
        if self.cluster is not None:
            deadlines.append(self.cluster.next_at())
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
            self._next_poll += delta
            self.writer.moved_clock(delta)
            if self.refresh is not None:
                self.refresh.clock_moved(delta)
            if self.cluster is not None:
                self.cluster.clock_moved(delta)
        self._last_now = now

    def due_work(self) -> None:
        now = self.clock.now()
        self._follow_clock(now)
        garbage_at = self.writer.next_garbage_check()
        garbage_due = garbage_at is not None and now >= garbage_at
        retry_due = self._retry_at is not None and now >= self._retry_at
        if now >= self._next_audit:
            self.recover()
        beat_at = self.guard.next_beat() if self.guard is not None else None
        if beat_at is not None and now >= beat_at and self.guard is not None:
            self.guard.beat(now, self._sessions_may_refresh(now, beat_at))
        if self.polled and now >= self._next_poll:
            self._poll(now)
        if self.cluster is not None and now >= self.cluster.next_at() and \
                self.cluster.due(now):
            self._mark_dirty(now, 0.0)
        if (self._dirty and self._due is not None and now >= self._due) or \
                now >= self._next_audit or garbage_due or retry_due:
            self._dirty, self._due = False, None
            if self.watcher is not None and self.watcher.sync():
                log.debug("watches re-aimed")
            self.reconcile()
        if self.refresh is not None:
            outcome = self.refresh.due(self.clock.now(), self.pause)
            if outcome is not None and self.stopping is None:
                log.info("refresh: %s (%s)", outcome.kind, outcome.message)
                if outcome.kind in (Kind.REFRESHED, Kind.ADOPTED, Kind.RELOGIN):
                    # The stores the refresher left alone get the new login; a refused one is
                    # dropped from the contest, and the user is told when nothing is left.
                    self.reconcile()
                elif outcome.kind is Kind.HELD and self._last_report is not None:
                    # Held by the cluster: the user may have to hear of it before the next
                    # round (the alert's times are the refresh deadline and the CLI's window).
                    self._alert(self._last_report, self.clock.now())
        if self.cluster is not None:
            self.cluster.flush()

    def _poll(self, now: float) -> None:
        self._next_poll = now + min(s.poll_s or AUDIT_S for s in self.polled)
        moved = [s.name for s in self.polled if s.changed()]
        if moved:
            log.debug("changed: %s", ", ".join(moved))
            self._mark_dirty(now, 0.0)

    def _sessions_may_refresh(self, now: float, beat_at: float) -> bool:
        """Could a CLI session be waiting on the refresh lock now (watching its mtime)? When
        the login is inside the CLI's own refresh window or past it, or the machine just
        woke (this beat comes much later than planned: a suspend)."""
        report = self._last_report
        winner = report.winner if report is not None else None
        if winner is None or now - beat_at > WOKE_LATE_S:
            return True
        window = CLI_WINDOW_S
        if self.refresh is not None:
            section = self.refresh.coordinator.section
            window = section.client_window_s + section.margin_s
        return winner.expires_at - now <= max(window, CLI_WINDOW_S)

    def pause(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for one event and handle it; True once a stop was asked.
        A refresh waiting for a lock or for the token server calls this, so that SIGTERM is
        honoured mid-refresh (handling an event only records it; the work waits its turn)."""
        try:
            event = self.events.get(timeout=seconds) if seconds > 0 else self.events.get_nowait()
        except queue.Empty:
            return self.stopping is not None
        self.dispatch(event)
        return self.stopping is not None

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

    def begin(self) -> None:
        """What a run does first: the cluster, clean-up after a killed predecessor, a round."""
        if self.cluster is not None:
            self.cluster.start()
        self.recover()
        self.reconcile()

    def end(self) -> None:
        """What a run does last, whatever happened: locks freed, records saved."""
        if self.guard is not None:
            self.guard.release()
        if self.cluster is not None:
            self.cluster.flush()
            self.cluster.stop()
        self.save({"stopped_at": self.clock.now()})

    def run(self) -> str:
        if self.watcher is not None:
            self.watcher.start()
        try:
            self.begin()
            while self.stopping is None:
                self.step()
        finally:
            try:
                self.end()
            finally:
                if self.watcher is not None:
                    self.watcher.stop()
        return self.stopping or "stopped"
