"""Running ``credsync`` as a real process in tests: a config file, the process, bounded waits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.ledger import scope_dir

REPO = Path(__file__).resolve().parents[1]


def wait_for(cond: Callable[[], bool], deadline_s: float = 10.0, what: str = "condition",
             interval_s: float = 0.005) -> float:
    """Poll ``cond`` until it holds; return the seconds it took. Fails after the deadline."""
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(interval_s)


def toml_value(value: Any) -> str:
    return json.dumps(str(value) if isinstance(value, Path) else value)


def write_config(path: Path, config_dirs: list[Path], state_dir: Path, *,
                 keychain: bool = True, sinks: list[dict[str, Any]] | None = None,
                 log_file: Path | None = None, log_level: str = "info",
                 refresh: Mapping[str, Any] | None = None,
                 notify: Mapping[str, Any] | None = None) -> Path:
    lines = ["[agent]", f"state_dir = {toml_value(state_dir)}",
             f"log_level = {toml_value(log_level)}",
             f"log_file = {toml_value(log_file or '')}", "", "[claude]",
             f"config_dirs = [{', '.join(toml_value(d) for d in config_dirs)}]",
             f"keychain = {'true' if keychain else 'false'}", "", "[refresh]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in (refresh or {"enabled": False}).items()]
    if notify:
        lines += ["", "[notify]", *(f"{k} = {toml_value(v)}" for k, v in notify.items())]
    for sink in sinks or []:
        lines += ["", "[[sinks]]", *(f"{k} = {toml_value(v)}" for k, v in sink.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def credsync(args: list[str], env: Mapping[str, str] | None = None, timeout: float = 60,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO,
                          env=dict(env or os.environ), capture_output=True, text=True,
                          timeout=timeout, input=input)


class AgentProcess:
    """``credsync run`` in the background; ``stop()`` sends SIGTERM and waits (bounded)."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None,
                 log: Path | None = None, prefix: list[str] | None = None) -> None:
        self.config = config
        self.log = log or config.with_suffix(".stderr")
        self._log_fh = open(self.log, "w")  # noqa: SIM115 - open for the process's lifetime
        # ``prefix``: a wrapper such as faketime, for a machine whose clock is off.
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "agent.cli", "run", "--config",
             str(config)], cwd=REPO,
            env=dict(env or os.environ), stdout=self._log_fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log.read_text()

    def wait_started(self, state_dir: Path, deadline_s: float = 15) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited early:\n{self.output()}")
            return self.stats(state_dir).get("rounds", 0) >= 1
        wait_for(up, deadline_s, "the agent's first round")

    @staticmethod
    def stats(state_dir: Path) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = json.loads((scope_dir(state_dir) / "agent.json").read_text())
            return obj
        except (OSError, ValueError):
            return {}

    def stop(self, deadline_s: float = 5) -> float:
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError("the agent did not stop on SIGTERM") from None
        finally:
            self._log_fh.close()
        return time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log_fh.close()
