"""Assembling and running the agent for the CLI."""

from __future__ import annotations

import logging
import queue
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from agent.build import build_stores, close_stores, state_dir
from agent.clock import Clock, SystemClock
from agent.credential import Credential
from agent.errors import AgentAlreadyRunning, LockError, RefreshError, ReloginRequired
from agent.refresh import Coordinator, Outcome, RefreshDriver, RefreshResultLike, RefreshState
from agent.stores.claude_file import ClaudeFileStore

# `credsync token` imports this module: what only the other commands need (pydantic through
# the config, portalocker, the status report) is imported where it is used.
if TYPE_CHECKING:
    from agent.config import Settings
    from agent.refresher import HttpRefresher
    from agent.status import Status
    from agent.tokennote import Note

log = logging.getLogger("credsync")


def run_agent(settings: Settings, config_path: Path, events: queue.Queue[object]) -> str:
    from agent.filelock import InstanceLock

    state = state_dir(settings)
    state.ensure()
    instance = InstanceLock(state.path)
    try:
        instance.acquire()
    except LockError as exc:
        pid = instance.holder()
        raise AgentAlreadyRunning(
            f"another agent already runs for {state.path} (pid {pid}); stop it first",
            pid) from exc
    # The loop's modules (watchdog among them) are loaded only by the command that runs it.
    from agent.agent import Agent
    from agent.alerting import Alerting
    from agent.notifier import build_notifier
    from agent.watcher import Watcher

    clock = SystemClock()
    try:
        with coordinator(settings, clock) as coord:
            stores = coord.stores
            driver = None
            if settings.refresh.enabled:
                from agent.refresher import Backoff

                driver = RefreshDriver(coord, Backoff())
            watch = [s.watch_path for s in stores if s.watch_path is not None]
            alerting = Alerting(settings.notify, build_notifier(settings.notify), state, clock)
            agent = Agent(stores, state, clock, events, Watcher(watch, events),
                          debounce_s=settings.agent.debounce_ms / 1000, refresh=driver,
                          alerting=alerting)
            agent.load()
            log.info("started: %d stores, config %s, state %s", len(stores), config_path,
                     state.path)
            try:
                return agent.run()
            finally:
                alerting.close()
    finally:
        instance.release()


class LazyRefresher:
    """The HTTP refresher, built on first use: `credsync token` with a fresh token never imports
    httpx (start-up time matters for a command run by every session)."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._real: HttpRefresher | None = None

    def prepare(self) -> HttpRefresher:
        """Build the HTTP client now (the coordinator calls this before journaling a token)."""
        if self._real is None:
            from agent.refresher import HttpRefresher

            self._real = HttpRefresher.from_settings(self.settings.refresh, self.clock)
        return self._real

    def refresh(self, cred: Credential) -> RefreshResultLike:
        return self.prepare().refresh(cred)

    def close(self) -> None:
        if self._real is not None:
            self._real.close()


@contextmanager
def coordinator(settings: Settings, clock: Clock) -> Iterator[Coordinator]:
    stores = build_stores(settings)
    refresher = LazyRefresher(settings, clock)
    try:
        yield Coordinator(settings.refresh, stores, settings.claude.config_dirs,
                          state_dir(settings), refresher, clock)
    finally:
        refresher.close()
        close_stores(stores)


def refresh_now(settings: Settings) -> Outcome:
    """One refresh now, under the locks (``credsync refresh``)."""
    with coordinator(settings, SystemClock()) as coord:
        return coord.run(coord.best(), force=True)


def _fresh(settings: Settings, coord: Coordinator, best: Credential | None) -> str | None:
    now = coord.clock.now()
    if best is not None and best.expires_at > now and (
            not settings.refresh.enabled or now < coord.deadline(best)):
        return best.access_token
    return None


def valid_token(settings: Settings, note: Note | None = None) -> str:
    """An access token that is valid now, refreshing under the locks when it is due.

    With a ``note`` (``credsync token``), a token handed out without refreshing is remembered
    together with every input it was chosen from, for the next call's fast path."""
    if note is not None:
        # The install's jitter salt is written on first use: before the reads, not between them.
        RefreshState(state_dir(settings)).ensure_salt()
        note.watch(note_inputs(settings))  # before anything below reads them
    with coordinator(settings, SystemClock()) as coord:
        best = coord.best()
        token = _fresh(settings, coord, best)
        if token is not None and best is not None:
            if note is not None and note_allowed(settings):
                note.remember(token, _fresh_until(settings, coord, best))
            return token
        if best is None:
            raise ReloginRequired(_relogin_message("no valid login in any store"))
        outcome = coord.run(best)
        cred = outcome.credential
        if outcome.kind == "relogin-required":
            raise ReloginRequired(_relogin_message(outcome.message))
        if cred is not None and cred.expires_at > coord.clock.now():
            return cred.access_token  # refreshed, adopted, or still valid after a failed try
        raise RefreshError(f"the login has expired and could not be refreshed now "
                           f"({outcome.message}); credsync will retry")


def note_inputs(settings: Settings) -> list[str]:
    """Every file ``Coordinator.best`` and ``deadline`` read (the keychain aside)."""
    from agent.refresh import JOURNAL_FILE, REFRESH_FILE
    from agent.state import LAST_GOOD_FILE

    state = settings.agent.state_dir
    files = [ClaudeFileStore(d).path for d in settings.claude.config_dirs]
    files += [state / name for name in (LAST_GOOD_FILE, REFRESH_FILE, JOURNAL_FILE)]
    return [str(f) for f in files]


def note_allowed(settings: Settings, platform: str = sys.platform) -> bool:
    # On macOS the keychain item is Claude Code's own store, which the note cannot check; a
    # debug log level asks for the full command's log lines.
    keychain_is_a_source = settings.claude.keychain and platform == "darwin"
    return not keychain_is_a_source and settings.agent.log_level != "debug"


def _fresh_until(settings: Settings, coord: Coordinator, best: Credential) -> float:
    if not settings.refresh.enabled:
        return best.expires_at
    return min(best.expires_at, coord.deadline(best))


def _relogin_message(why: str) -> str:
    return (f"a re-login is required ({why}): run `claude` and then /login in any session, "
            "or `claude auth login`")


def collect_status(settings: Settings, config_path: Path) -> Status:
    from agent.status import collect, iso

    clock = SystemClock()
    stores = build_stores(settings)
    try:
        status = collect(stores, state_dir(settings), str(config_path), clock.now())
    finally:
        close_stores(stores)
    status.extra["refresh"] = refresh_status(settings, status, clock.now())
    from agent.alerting import load_active_alert

    alert = load_active_alert(state_dir(settings), settings.notify, clock)
    if alert is not None:
        status.login_state = "relogin-required"
        status.extra["alert"] = {"event": alert.event, "title": alert.title,
                                 "since": iso(alert.since),
                                 "config_dirs": list(alert.affected_dirs)}
    from agent.cli_install import login_item_status

    status.extra["login_item"] = login_item_status(settings)
    return status


def refresh_status(settings: Settings, status: Status, now: float) -> dict[str, object]:
    """The refresh part of ``credsync status``: state, lifetime and the next deadline."""
    from agent.refresh import RefreshState, Schedule
    from agent.status import iso

    records = RefreshState(state_dir(settings))
    auth = records.auth
    best = status.best
    stale_auth = best is not None and auth.get("fingerprint") not in (None, best.fingerprint)
    state = "ok" if stale_auth else str(auth.get("state", "ok"))
    if best is not None and best.expires_at <= now and state == "ok":
        state = "expired"
    out: dict[str, object] = {"enabled": settings.refresh.enabled, "state": state}
    if not stale_auth and auth.get("reason"):
        out["reason"] = auth.get("reason")
    schedule = Schedule(settings.refresh, records.salt)
    lifetime, source = schedule.lifetime(records.lifetime_s)
    out.update(lifetime_s=lifetime, lifetime_source=source,
               last_refresh_at=iso(records.refreshed_at))
    if best is not None and settings.refresh.enabled:
        out["next_refresh_at"] = iso(schedule.deadline(best, lifetime, records.refreshed_at))
    if state not in ("ok", "expired"):
        status.login_state = state
    return out
