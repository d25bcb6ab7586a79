"""A real ``redis-server`` per test, and a TCP proxy that can stall or cut one client's link.

The server runs with no persistence (``--save '' --appendonly no``), so ``kill9()`` followed by
``start()`` on the same port is a Redis that lost every key, as after a crash of an unpersisted
or badly persisted primary. Readiness is a PING answered within a deadline (the server's own
answer, not a sleep). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REDIS_SERVER = shutil.which("redis-server")
REPO_ROOT = Path(__file__).resolve().parents[1]
READY_DEADLINE_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers_ping(port: int, password: str | None, tls: bool = False) -> bool:
    try:
        with contextlib.ExitStack() as stack:
            s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=0.5))
            if tls:  # the probe only asks whether the server is up: no verification
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                s = stack.enter_context(context.wrap_socket(s))
            if password:
                s.sendall(f"AUTH {password}\r\n".encode())
                s.recv(64)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, workdir: Path, password: str | None = None,
                 unix_socket: bool = False, tls: tuple[Path, Path] | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; "
                               "packaging/setup-tests.sh does it)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.socket_path = self.dir / "redis.sock" if unix_socket else None
        self.tls = tls  # (certificate chain, key): TLS only, on ``port``
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.socket_path is not None
        return f"unix://{self.socket_path}"

    def _argv(self) -> list[str]:
        assert REDIS_SERVER is not None
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.tls else \
            ["--port", str(self.port)]
        argv = [REDIS_SERVER, *ports, "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--logfile",
                str(self.dir / "redis.log"), "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls:
            argv += ["--tls-cert-file", str(self.tls[0]), "--tls-key-file", str(self.tls[1]),
                     "--tls-auth-clients", "no"]
        if self.socket_path is not None:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return argv

    def start(self) -> None:
        self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        deadline = time.monotonic() + READY_DEADLINE_S
        while not _answers_ping(self.port, self.password, self.tls is not None):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}): "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"redis-server not ready in {READY_DEADLINE_S} s")
            time.sleep(0.01)  # between two readiness probes, not as synchronisation

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "redis.log").read_text()[-2000:]
        return ""

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill9(self) -> None:
        """Gone at once, every key with it (no persistence)."""
        self._end(signal.SIGKILL)

    def restart_empty(self) -> None:
        self.kill9()
        self.start()


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


@contextlib.contextmanager
def running(workdir: Path, **kw: Any) -> Iterator[RedisServer]:
    """A started server, stopped (by pid) at the end whatever happened."""
    server = RedisServer(workdir, **kw)
    server.start()
    try:
        yield server
    finally:
        server.stop()
