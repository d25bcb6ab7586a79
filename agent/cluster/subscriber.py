"""The cluster's events, on a thread of their own, put on the agent's queue and nothing else.

pub/sub is at most once and redis-py re-subscribes silently, so every (re)subscribe
confirmation is followed by a versioned read of the state (``Resubscribed``): what was
published while the link was down is not lost. A half-open link (a stalled proxy, a NAT that
forgot the connection) reads as silence, so an echo goes down the subscription every 2 s and
must come back within 1.5 s, else the link is dropped and made again (found within 3.5 s).
Every wait is bounded; a stop is noticed within one slice (0.25 s).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from agent.clock import Clock
from agent.cluster.envelope import ClusterKeys
from agent.cluster.membership import Membership
from agent.cluster.redisio import Message, Subscription
from agent.cluster.state import (
    Claimed,
    LinkDown,
    Lost,
    Released,
    Resubscribed,
    StatePublished,
    StateReader,
    open_snapshot,
)
from agent.errors import ClusterError, ClusterUnavailable

log = logging.getLogger("credsync.cluster")

# Capped low: a machine whose link comes back catches up within seconds; a refused
# connection costs next to nothing.
BACKOFF_S = (0.2, 1.0, 2.0, 4.0)
SLICE_S = 0.25
LISTEN_S = 1.0  # the longest wait for a message while listening


class Subscriber:
    def __init__(self, subscribe: Callable[[], Subscription], reader: StateReader,
                 keys: ClusterKeys, member: Membership, events: queue.Queue[object],
                 clock: Clock, *, echo_every_s: float = 2.0, echo_deadline_s: float = 1.5,
                 confirm_deadline_s: float = 2.0, backoff_s: Sequence[float] = BACKOFF_S) -> None:
        self._subscribe = subscribe
        self.reader = reader
        self.keys = keys
        self.member = member
        self.events = events
        self.clock = clock
        self.echo_every_s = echo_every_s
        self.echo_deadline_s = echo_deadline_s
        self.confirm_deadline_s = confirm_deadline_s
        self.backoff_s = tuple(backoff_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None
        self._echoes = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="credsync-cluster", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = LISTEN_S + 0.5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self._session()
                attempt = 0
            except ClusterError as exc:
                self._down(str(exc))
                attempt += 1
            except Exception as exc:  # a bug must not end the thread silently
                log.exception("cluster subscriber failed")
                self._down(f"internal error: {exc}")
                attempt += 1
            delay = self.backoff_s[min(max(attempt - 1, 0), len(self.backoff_s) - 1)]
            if self._stop.wait(delay if attempt else 0):
                return

    def _down(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = self.clock.now()
            self.events.put(LinkDown(self._down_since, reason))

    def _session(self) -> None:
        sub = self._subscribe()
        try:
            sub.subscribe()
            self._confirm(sub)
            snapshot = self.reader.read()
            self.events.put(Resubscribed(snapshot, self.clock.now(), self._down_since))
            self._down_since = None
            self._listen(sub)
        finally:
            sub.close()

    def _confirm(self, sub: Subscription) -> None:
        deadline = self.clock.monotonic() + self.confirm_deadline_s
        while not self._stop.is_set() and self.clock.monotonic() < deadline:
            message = sub.get(SLICE_S)
            if message is not None and message.kind == "subscribe":
                return
        raise ClusterUnavailable("the subscription was not confirmed in time")

    def _listen(self, sub: Subscription) -> None:
        next_echo = self.clock.monotonic() + self.echo_every_s
        waiting: tuple[str, float] | None = None
        while not self._stop.is_set():
            # Never past the echo's deadline or the next echo: a half-open link is found
            # within echo_every_s + echo_deadline_s, not a slice later.
            due = waiting[1] + self.echo_deadline_s if waiting is not None else next_echo
            # Up to the next echo, at most LISTEN_S, not a short slice: an idle member wakes
            # about 60 times a minute, not 300, and a stop is still seen within a second.
            wait = min(LISTEN_S, max(0.005, due - self.clock.monotonic()))
            message = sub.get(wait)
            if message is not None:
                if message.kind == "pong" and waiting and message.data.decode() == waiting[0]:
                    waiting = None
                elif message.kind == "message":
                    self._handle(message)
            now = self.clock.monotonic()
            if waiting is not None and now - waiting[1] > self.echo_deadline_s:
                raise ClusterUnavailable(f"no echo from Redis within {self.echo_deadline_s:g} s "
                                         "(a half-open link?)")
            if waiting is None and now >= next_echo:
                self._echoes += 1
                token = f"credsync-echo-{self._echoes}"
                sub.echo(token)
                waiting, next_echo = (token, now), now + self.echo_every_s

    def _handle(self, message: Message) -> None:
        parts = message.data.decode(errors="replace").split("|")
        kind = parts[0]
        if kind == "S" and len(parts) >= 5:
            epoch = "|".join(parts[1:-3]) if len(parts) > 5 else parts[1]
            version, fence, blob = parts[-3], parts[-2], parts[-1]
            if version.isdigit() and fence.isdigit():
                snapshot = open_snapshot(self.keys, self.member, epoch, int(version),
                                         int(fence), blob)
                self.events.put(StatePublished(snapshot, self.clock.now()))
        elif kind in ("C", "R", "L") and len(parts) >= 4 and parts[3].isdigit():
            event = {"C": Claimed, "R": Released, "L": Lost}[kind]
            self.events.put(event(parts[1], parts[2], int(parts[3])))
