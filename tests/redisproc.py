"""A real ``redis-server`` per test, and a TCP proxy that can stall or cut one client's link.

The server itself (``RedisServer``, ``free_port``, ``running``) lives in
``agent.sim.redisserver``, shared with the benchmarks; it is re-exported here. Everything
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from pathlib import Path

from agent.sim.redisserver import (
    READY_DEADLINE_S,
    REDIS_SERVER,
    RedisServer,
    free_port,
    running,
)

__all__ = ["READY_DEADLINE_S", "REDIS_SERVER", "REPO_ROOT", "RedisServer", "TcpProxy",
           "free_port", "running"]

REPO_ROOT = Path(__file__).resolve().parents[1]


class TcpProxy:
    """127.0.0.1 only: forwards each accepted connection to ``target_port``. ``stall()`` stops
    forwarding in both directions while keeping the connections open (a half-open link as a
    sleeping NAT or a dead Wi-Fi gives); ``cut()`` closes every current connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stalled = threading.Event()
        self._closed = threading.Event()
        self._cut_requests: list[threading.Event] = []
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def cut(self) -> None:
        """Close every current connection (done by the proxy's thread, which owns them)."""
        done = threading.Event()
        self._cut_requests.append(done)
        if not done.wait(2):
            raise AssertionError("the proxy did not cut its connections in 2 s")

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(2)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        self._listener.setblocking(False)
        sel.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._closed.is_set():
            while self._cut_requests:
                self._close_all(sel, peers)
                self._cut_requests.pop(0).set()
            if self._stalled.is_set():
                self._closed.wait(0.02)  # forward nothing; keep every socket open
                continue
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept(sel, peers)
                else:
                    self._pump(sel, peers, sock)
        self._close_all(sel, peers)
        sel.close()

    @staticmethod
    def _close_all(sel: selectors.BaseSelector,
                   peers: dict[socket.socket, socket.socket]) -> None:
        for s in list(peers):
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        peers.clear()

    def _accept(self, sel: selectors.BaseSelector,
                peers: dict[socket.socket, socket.socket]) -> None:
        try:
            client, _ = self._listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            return
        peers[client], peers[upstream] = upstream, client
        for s in (client, upstream):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)

    def _pump(self, sel: selectors.BaseSelector, peers: dict[socket.socket, socket.socket],
              sock: socket.socket) -> None:
        other = peers.get(sock)
        try:
            data = sock.recv(65536)
            if data and other is not None:
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
                return
        except OSError:
            pass
        for s in (sock, other):
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(s)
            peers.pop(s, None)
            s.close()
