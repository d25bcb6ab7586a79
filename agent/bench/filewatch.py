"""How the cluster benchmark sees things arrive: inotify on the files' directories, and a raw
pub/sub connection that notes when a message crosses Redis.

Both are file descriptors in one ``select``: the bench sleeps until the kernel says a file was
replaced (or a message came), then reads the file; a 50 ms timeout re-reads anyway, so a
missed event costs latency, never a hang. Linux only (inotify through libc).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
FALLBACK_S = 0.05  # a re-read at least this often, whatever inotify said


class Inotify:
    """An inotify instance watching directories for a file closed after writing or renamed
    into place (what an atomic write ends with)."""

    def __init__(self, dirs: Iterable[Path]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = int(self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for d in dirs:
            wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(d),
                                                  IN_CLOSE_WRITE | IN_MOVED_TO))
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d} failed")

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass

    def close(self) -> None:
        os.close(self.fd)


def _line(buf: bytes, at: int) -> tuple[bytes, int] | None:
    end = buf.find(b"\r\n", at)
    return None if end < 0 else (buf[at:end], end + 2)


def parse_replies(buf: bytes) -> tuple[list[list[bytes]], bytes]:
    """Complete RESP arrays (of bulk strings and integers) at the front of ``buf``, and what
    is left after them."""
    replies: list[list[bytes]] = []
    at = 0
    while True:
        head = _line(buf, at)
        if head is None or not head[0].startswith(b"*"):
            return replies, buf[at:]
        items: list[bytes] = []
        pos = head[1]
        for _ in range(int(head[0][1:])):
            item = _line(buf, pos)
            if item is None:
                return replies, buf[at:]
            if item[0].startswith(b"$"):
                size = int(item[0][1:])
                if len(buf) < item[1] + size + 2:
                    return replies, buf[at:]
                items.append(buf[item[1]:item[1] + size])
                pos = item[1] + size + 2
            else:
                items.append(item[0][1:])
                pos = item[1]
        replies.append(items)
        at = pos


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Tap:
    """A raw PSUBSCRIBE on 127.0.0.1: when each message passed through Redis, and its size."""

    def __init__(self, port: int, pattern: str, deadline_s: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=deadline_s)
        self.sock.sendall(_command(b"PSUBSCRIBE", pattern.encode()))
        self._buf = b""
        self.sizes: list[int] = []
        end = time.monotonic() + deadline_s
        while not self._confirmed():
            if time.monotonic() > end:
                raise TimeoutError("the tap's PSUBSCRIBE was not confirmed")
            self._buf += self.sock.recv(65536)
        self.sock.setblocking(False)

    def _confirmed(self) -> bool:
        replies, self._buf = parse_replies(self._buf)
        return any(r and r[0] == b"psubscribe" for r in replies)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> int:
        """Read what came; the number of messages in it."""
        with contextlib.suppress(BlockingIOError):
            while chunk := self.sock.recv(65536):
                self._buf += chunk
        replies, self._buf = parse_replies(self._buf)
        messages = [r for r in replies if len(r) == 4 and r[0] == b"pmessage"]
        self.sizes += [len(r[3]) for r in messages]
        return len(messages)

    def close(self) -> None:
        self.sock.close()


def holds(path: Path, token: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return token in fh.read()
    except OSError:
        return False


@dataclass
class Arrival:
    """Seconds from the start until each file held the token, and until the tap saw a
    message (None without a tap)."""

    files: dict[Path, float] = field(default_factory=dict)
    tap_s: float | None = None

    @property
    def last_s(self) -> float:
        return max(self.files.values())


class Watch:
    """inotify on every directory of ``files`` (and the tap, if any) in one ``select``."""

    def __init__(self, files: Sequence[Path], tap: Tap | None = None) -> None:
        self.inotify = Inotify(sorted({f.parent for f in files}))
        self.tap = tap

    def reset(self) -> None:
        """Forget what came before the next start."""
        self.inotify.drain()
        if self.tap is not None:
            self.tap.drain()

    def wait(self, files: Sequence[Path], token: bytes, start: float,
             deadline_s: float) -> Arrival:
        """Until every file in ``files`` holds ``token`` (``start``: a perf_counter)."""
        out = Arrival()
        pending = list(files)
        end = start + deadline_s
        while True:
            for path in [p for p in pending if holds(p, token)]:
                out.files[path] = time.perf_counter() - start
                pending.remove(path)
            if not pending:
                return out
            left = end - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"{', '.join(p.parent.parent.name for p in pending)} never "
                                   f"got the login within {deadline_s:g} s")
            self._sleep(out, start, min(left, FALLBACK_S))

    def _sleep(self, out: Arrival, start: float, timeout_s: float) -> None:
        fds: list[Inotify | Tap] = [self.inotify]
        if self.tap is not None and out.tap_s is None:
            fds.append(self.tap)
        ready, _, _ = select.select(fds, [], [], timeout_s)
        now = time.perf_counter()
        if self.tap is not None and self.tap in ready and self.tap.drain():
            out.tap_s = now - start
        if self.inotify in ready:
            self.inotify.drain()

    def close(self) -> None:
        self.inotify.close()
        if self.tap is not None:
            self.tap.close()
