"""The cluster benchmark's floor: a bare subscriber that writes each message to a file.

    python -m agent.bench.floorsub PORT CHANNEL FILE

The minimum a machine receiving a login through Redis must do: redis-py's pub/sub on
127.0.0.1 (``get_message`` with a timeout, as the agent's subscriber), and on each message
the steps of the agent's atomic write (``agent.fsutil.atomic_write``: temp + fchmod + fsync +
rename + directory fsync). Prints ``ready`` once subscribed, then for each message the
``time.perf_counter()`` of its rename (CLOCK_MONOTONIC, the same clock in every process on
Linux): the benchmark subtracts it from the moment it saw the file, which is its own detection
latency. Ends on the message ``quit``, when its parent goes, or after an hour (every wait
bounded).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from agent.fsutil import PRIVATE_FILE, fsync_dir

QUIT = b"quit"
LIFETIME_S = 3600.0
CONFIRM_DEADLINE_S = 10.0


def _confirm(pubsub: redis.client.PubSub) -> None:
    end = time.monotonic() + CONFIRM_DEADLINE_S
    while time.monotonic() < end:
        message = pubsub.get_message(timeout=0.25)
        if message is not None and message.get("type") == "subscribe":
            return
    raise TimeoutError("the subscription was not confirmed")


def write(target: Path, data: bytes) -> float:
    """``atomic_write``'s steps; the perf_counter just before the rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    renamed = time.perf_counter()
    os.replace(tmp, target)
    fsync_dir(target.parent)
    return renamed


def serve(port: int, channel: str, target: Path) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5,
                         socket_connect_timeout=5)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel)
    _confirm(pubsub)
    print("ready", flush=True)
    parent, end = os.getppid(), time.monotonic() + LIFETIME_S
    while time.monotonic() < end and os.getppid() == parent:
        message = pubsub.get_message(timeout=0.25)
        if message is None or message.get("type") != "message":
            continue
        data = message["data"]
        if data == QUIT:
            break
        print(f"{write(target, data):.9f}", flush=True)
    pubsub.close()
    client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    serve(int(args[0]), args[1], Path(args[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
