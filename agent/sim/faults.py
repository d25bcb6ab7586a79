"""Failures the simulated token endpoint can be told to produce, one per coming token request."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

FaultKind = Literal["status", "delay", "drop", "lost", "garbage"]
KINDS: tuple[str, ...] = ("status", "delay", "drop", "lost", "garbage")


@dataclass(frozen=True)
class Fault:
    """What happens to one token request.

    status   answer ``status`` (with ``Retry-After: retry_after`` when set) and rotate nothing
    delay    wait ``delay_s``, then serve normally: a client that timed out meanwhile has lost a
             rotation the server did
    drop     close the connection before doing anything
    lost     rotate, then close the connection: the client never sees the new tokens
    garbage  answer 200 with a body that is not JSON, rotating nothing
    """

    kind: FaultKind
    status: int = 0
    retry_after: str | None = None
    delay_s: float = 0.0

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Fault:
        kind = obj.get("kind")
        if kind not in KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(KINDS)}")
        retry_after = obj.get("retry_after")
        return cls(kind=kind, status=int(obj.get("status", 0)),
                   retry_after=None if retry_after is None else str(retry_after),
                   delay_s=float(obj.get("delay_s", 0.0)))


class FaultQueue:
    """Thread-safe: tests push from their thread while handler threads pop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()

    def push(self, fault: Fault, count: int = 1) -> None:
        if fault.kind == "status" and not 100 <= fault.status <= 599:
            raise ValueError("a status fault needs an HTTP status code")
        with self._lock:
            self._queue.extend([fault] * count)

    def pop(self) -> Fault | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)
