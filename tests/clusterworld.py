"""Several machines sharing one login through a real redis-server: each a HOME of its own with
a real ``credsync run`` process, against the simulated OAuth server (rotation, family
revocation). Used by tests/test_cluster_machines.py. A machine's environment and its
``[cluster]`` table come from ``agent.bench.machines``, which the cluster benchmark's machines
are built with too (the benchmark imports nothing from the tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.bench.machines import cluster_toml, machine_env
from agent.credential import Credential, parse_document
from agent.ledger import scope_dir
from agent.sim.server import OAuthServer
from tests.agentproc import AgentProcess, credsync, wait_for, write_config
from tests.clusterkit import raw_redis
from tests.redisproc import RedisServer

# Short tokens, so that a test sees several rotations in seconds; the tunables scaled with
# them (the defaults are for 8-hour tokens).
REFRESH = {"jitter": 0.0, "client_window_s": 0, "margin_s": 0, "timeout_s": 3}
CLUSTER = {"quarantine_s": 3, "claim_valid_s": 3, "heartbeat_s": 1, "echo_every_s": 0.5,
           "echo_deadline_s": 0.5, "connect_timeout_s": 1, "socket_timeout_s": 1}


def libfaketime() -> str:
    """Debian's libfaketime (the `faketime` package the test set-up installs)."""
    for candidate in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                      "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                      "/usr/lib/faketime/libfaketime.so.1"):
        if os.path.exists(candidate):
            return candidate
    raise AssertionError("libfaketime is not installed (apt-get install faketime)")


@dataclass
class Machine:
    name: str
    home: Path
    config: Path
    skew_s: float = 0.0
    proc: AgentProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        env = machine_env(self.home)
        if self.skew_s:
            # libfaketime preloaded into the agent itself: this machine's wall clock is off, its
            # monotonic clock is not. (Not the faketime wrapper: it runs the agent as a child
            # of its own, which SIGTERM to the wrapper leaves running.)
            env.update(LD_PRELOAD=libfaketime(), FAKETIME=f"{self.skew_s:+g}s",
                       FAKETIME_DONT_FAKE_MONOTONIC="1")
        return env

    @property
    def prefix(self) -> list[str]:
        return []

    @property
    def cred_file(self) -> Path:
        return self.home / ".claude" / ".credentials.json"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    def cluster(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = credsync(["cluster", *args, "--config", str(self.config)], env=self.env)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def credential(self) -> Credential | None:
        try:
            return parse_document(self.cred_file.read_bytes())[0].valid
        except OSError:
            return None

    def start(self) -> None:
        self.proc = AgentProcess(self.config, env=self.env, prefix=self.prefix)
        self.proc.wait_started(self.state_dir, 20)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()
            self.proc.stop(10)
            self.proc = None

    def log(self) -> str:
        return self.proc.output() if self.proc is not None else ""

    # ----- what the machine's state dir says ----------------------------------------------
    def _state(self, name: str) -> dict[str, Any]:
        try:
            obj = json.loads((scope_dir(self.state_dir) / name).read_text())
        except (OSError, ValueError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def member_id(self) -> str | None:
        found = self._state("cluster.json").get("member_id")
        return str(found) if found else None

    def view_epoch(self) -> str:
        return str(self._state("cluster-view.json").get("epoch", ""))

    def gossip(self) -> str:
        try:
            return (scope_dir(self.state_dir) / "cluster-gossip").read_text()
        except OSError:
            return ""

    def offset_s(self) -> float | None:
        found = self._state("cluster-live.json").get("offset_s")
        return float(found) if isinstance(found, (int, float)) else None

    def down_since(self) -> float | None:
        found = self._state("cluster-live.json").get("down_since")
        return float(found) if isinstance(found, (int, float)) else None


@dataclass
class World:
    root: Path
    redis: RedisServer
    server: OAuthServer
    lifetime_s: float
    machines: list[Machine] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)  # a machine's own way to Redis
    tap: Tap | None = None  # every message on the cluster's channels (the fixture's)

    def add(self, name: str, skew_s: float = 0.0, url: str | None = None,
            cluster: dict[str, Any] | None = None,
            notify: dict[str, Any] | None = None) -> Machine:
        home = self.root / name
        (home / ".claude").mkdir(parents=True)
        refresh = {**REFRESH, "token_url": self.server.url,
                   "nominal_lifetime_s": self.lifetime_s}
        config = write_config(home / "config.toml", [home / ".claude"], home / "state",
                              keychain=False, refresh=refresh,
                              notify=notify or {"desktop": False})
        with config.open("a") as f:
            f.write(cluster_toml({**CLUSTER, **(cluster or {})}))
        machine = Machine(name, home, config, skew_s)
        self.machines.append(machine)
        self.urls[name] = url or self.redis.url
        return machine

    def form(self) -> None:
        """``cluster init`` on the first machine, ``invite`` + ``join`` on every other."""
        first, *rest = self.machines
        first.cluster("init", "--redis", self.urls[first.name])
        for machine in rest:
            code = [line for line in first.cluster("invite").stdout.splitlines()
                    if line.strip()][-1]
            machine.cluster("join", code, "--redis", self.urls[machine.name])

    def launch(self) -> Credential:
        """Form the cluster, log in on the first machine, start every agent, and wait until
        every machine holds that login (the others had none)."""
        self.form()
        login = self.login(self.machines[0])
        self.start()
        self.wait_live(10, "the first machine's login on every machine")
        return login

    def login(self, machine: Machine, expires_in_s: float | None = None) -> Credential:
        oauth = self.server.issue_login()
        if expires_in_s is not None:
            oauth["expiresAt"] = int((time.time() + expires_in_s) * 1000)
        machine.cred_file.write_text(json.dumps({"claudeAiOauth": oauth}))
        os.chmod(machine.cred_file, 0o600)
        cred = parse_document(machine.cred_file.read_bytes())[0].valid
        assert cred is not None
        return cred

    def start(self) -> None:
        for machine in self.machines:
            machine.start()

    def stop(self) -> None:
        for machine in self.machines:
            machine.stop()

    def on_live_token(self, machines: list[Machine] | None = None) -> bool:
        """Every machine's file holds one same access token, which the API accepts."""
        creds = [m.credential() for m in machines or self.machines]
        tokens = {c.access_token for c in creds if c is not None}
        return None not in creds and len(tokens) == 1 and \
            self.server.check_access(tokens.pop())

    def wait_live(self, deadline_s: float = 10.0, what: str = "every machine on the live "
                                                             "token") -> float:
        return wait_for(self.on_live_token, deadline_s, what, interval_s=0.02)

    def run_for(self, seconds: float, check_every_s: float = 0.5) -> None:
        """Let the machines work; fails early when a family is revoked."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            stats = self.server.stats()
            assert stats.revoked_families == 0 and stats.invalid_grants == 0, \
                (stats, self.logs())
            time.sleep(check_every_s)

    def logs(self) -> str:
        return "\n".join(f"--- {m.name}\n{m.log()[-4000:]}" for m in self.machines)

    def redis_texts(self) -> list[bytes]:
        """Every key, every value (of every type) Redis holds now."""
        r = raw_redis(self.redis.port)
        out: list[bytes] = []
        for key in r.scan_iter(count=1000):
            out.append(key)
            kind = r.type(key).decode()
            if kind == "string":
                out.append(r.get(key) or b"")
            elif kind == "hash":
                for k, v in r.hgetall(key).items():
                    out += [k, v]
            elif kind == "list":
                out += r.lrange(key, 0, -1)
            elif kind in ("set", "zset"):
                out += list(r.smembers(key)) if kind == "set" else \
                    [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        r.close()
        return out


def leaked(texts: list[bytes], tokens: list[str]) -> list[str]:
    """Tokens (or a plain SHA-256 of one) found in ``texts``."""
    import hashlib

    blob = b"\n".join(texts)
    found = []
    for token in tokens:
        forms = [token.encode(), hashlib.sha256(token.encode()).hexdigest().encode()]
        if any(f in blob for f in forms):
            found.append(token[:6] + "...")
    return found


class Tap:
    """Every message published on the cluster's channels while it runs (a raw subscriber that
    subscribes again whenever Redis is killed and comes back: a restart loses no scan)."""

    def __init__(self, port: int) -> None:
        import threading

        self.port = port
        self.messages: list[bytes] = []
        self.subscriptions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            client = raw_redis(self.port)
            try:
                pubsub = client.pubsub()
                pubsub.psubscribe("cs:*")
                self.subscriptions += 1
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.2)
                    if msg and msg.get("type") == "pmessage":
                        self.messages.append(msg["data"])
            except (redis.exceptions.RedisError, OSError):
                self._stop.wait(0.1)  # Redis is down: try again until the tap is closed
            finally:
                client.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(3)
