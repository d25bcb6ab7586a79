"""Machines for the cluster benchmark: each a HOME of its own, a config, ``credsync cluster``
commands and a real ``credsync run`` (``kit.AgentRun``). One Redis on 127.0.0.1 joins them.

``machine_env`` and ``cluster_toml`` are shared with ``tests/clusterworld.py``: a machine's
environment (its own HOME and XDG dirs, nothing of the caller's credsync, D-Bus or Claude
variables) and the ``[cluster]`` table of its config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bench import kit

CLI_DEADLINE_S = 60.0


def machine_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a machine whose HOME is ``home``."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(("CREDSYNC_", "DBUS_", "CLAUDE_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_STATE_HOME=str(home / ".local/state"), XDG_CACHE_HOME=str(home / ".cache"))
    return env


def cluster_toml(values: Mapping[str, Any]) -> str:
    """A ``[cluster]`` table, to append to a config file."""
    return "\n[cluster]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


@dataclass
class Machine:
    name: str
    home: Path
    config: Path
    agent: kit.AgentRun | None = None

    @classmethod
    def create(cls, root: Path, name: str, cluster: Mapping[str, Any] | None = None,
               refresh: Mapping[str, Any] | None = None) -> Machine:
        """A HOME under ``root`` with one config dir, no keychain, refresh off unless
        ``refresh`` says otherwise; a ``[cluster]`` table when ``cluster`` is given (an empty
        one: the defaults)."""
        home = root / name
        (home / ".claude").mkdir(parents=True)
        config = kit.write_config(home / "config.toml", [home / ".claude"], home / "state",
                                  keychain=False, refresh=refresh or {"enabled": False})
        if cluster is not None:
            with config.open("a") as f:
                f.write(cluster_toml(cluster))
        return cls(name, home, config)

    @property
    def env(self) -> dict[str, str]:
        return kit.child_env(machine_env(self.home))

    @property
    def cred_file(self) -> Path:
        return self.home / ".claude" / ".credentials.json"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    def cluster(self, *args: str) -> str:
        """``credsync cluster ARGS`` on this machine; its output (no token is in it)."""
        done = subprocess.run(kit.credsync_argv("cluster", *args, "--config", str(self.config)),
                              cwd=kit.PACKAGE_ROOT, env=self.env, capture_output=True,
                              text=True, timeout=CLI_DEADLINE_S, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"credsync cluster {args[0]} on {self.name} failed "
                               f"({done.returncode}): {done.stderr[-500:]}")
        return done.stdout

    def start(self) -> kit.AgentRun:
        """``credsync run``, not waited for (``wait_started``)."""
        self.agent = kit.AgentRun(self.config, self.state_dir, self.env)
        return self.agent

    @property
    def pid(self) -> int:
        assert self.agent is not None
        return self.agent.pid

    def stop(self) -> None:
        if self.agent is not None:
            agent, self.agent = self.agent, None
            agent.stop()


def form(machines: Sequence[Machine], redis_url: str) -> None:
    """``cluster init`` on the first machine, ``invite`` + ``join`` on every other."""
    first, *rest = machines
    first.cluster("init", "--redis", redis_url)
    for machine in rest:
        code = [line for line in first.cluster("invite").splitlines() if line.strip()][-1]
        machine.cluster("join", code.strip(), "--redis", redis_url)


def start_all(machines: Sequence[Machine]) -> None:
    """Every agent started at once, then each waited for (bounded)."""
    for machine in machines:
        machine.start()
    for machine in machines:
        assert machine.agent is not None
        machine.agent.wait_started()


def stop_all(machines: Sequence[Machine]) -> None:
    for machine in machines:
        try:
            machine.stop()
        except Exception as exc:  # the others are stopped all the same
            print(f"[bench] stopping {machine.name}: {exc}", file=sys.stderr, flush=True)
