"""Several providers on one loop: Claude Code's login and Codex's, each an ``Agent`` (its
stores, writer, refresh driver, alerts) sharing one event queue, one watcher and one thread.

Every event goes to every lane (a file event that is not a lane's own costs it one cheap
round at most); the queue's timeout is the earliest of the lanes' deadlines. A lane's refresh
that waits (for a lock, for the token server) keeps handing events to all lanes, so a stop is
still honoured at once.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Sequence

from agent.loop.agent import Agent, WatcherLike
from agent.loop.watcher import DirsChanged

log = logging.getLogger("credsync.agent")


class Lanes:
    def __init__(self, lanes: Sequence[Agent], events: queue.Queue[object],
                 watcher: WatcherLike | None = None) -> None:
        if not lanes:
            raise ValueError("at least one lane")
        self.lanes = list(lanes)
        self.events = events
        self.watcher = watcher
        for lane in self.lanes:
            lane.dispatch = self.dispatch

    @property
    def stopping(self) -> str | None:
        return next((lane.stopping for lane in self.lanes if lane.stopping), None)

    def dispatch(self, event: object) -> None:
        if isinstance(event, DirsChanged) and self.watcher is not None:
            self.watcher.sync()  # once for all lanes: the watcher is shared
        for lane in self.lanes:
            lane.handle(event)

    def step(self, timeout: float | None = None) -> None:
        wait = min(lane.next_timeout() for lane in self.lanes) if timeout is None else timeout
        try:
            event = self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait()
        except queue.Empty:
            event = None
        if event is not None:
            self.dispatch(event)
            while True:  # a burst costs one round per lane
                try:
                    self.dispatch(self.events.get_nowait())
                except queue.Empty:
                    break
        if self.watcher is not None and self.watcher.sync():
            log.debug("watches re-aimed")  # a dir appeared, vanished or was replaced
        for lane in self.lanes:
            if self.stopping is not None:
                return
            lane.due_work()

    def run(self) -> str:
        if self.watcher is not None:
            self.watcher.start()
        begun: list[Agent] = []
        try:
            for lane in self.lanes:
                begun.append(lane)
                lane.begin()
            while self.stopping is None:
                self.step()
        finally:
            for lane in begun:
                try:
                    lane.end()
                except Exception:  # one lane's failure must not keep the others' locks
                    log.exception("stopping a lane failed")
            if self.watcher is not None:
                self.watcher.stop()
        return self.stopping or "stopped"
