"""A real ``redis-server`` on 127.0.0.1, for the tests and the benchmarks.

The server runs with no persistence (``--save '' --appendonly no``), so ``kill9()`` followed by
``start()`` on the same port is a Redis that lost every key, as after a crash of an unpersisted
or badly persisted primary. Readiness is a PING answered within a deadline (the server's own
answer, not a sleep). It listens on 127.0.0.1 only and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REDIS_SERVER = shutil.which("redis-server")
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


@contextlib.contextmanager
def running(workdir: Path, **kw: Any) -> Iterator[RedisServer]:
    """A started server, stopped (by pid) at the end whatever happened."""
    server = RedisServer(workdir, **kw)
    server.start()
    try:
        yield server
    finally:
        server.stop()
