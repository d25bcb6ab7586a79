"""The morning after: every session and the agent stopped past the token's expiry, resumed
together, every session calling at once (issue: sleep and wake).

``run_wake(root, agent=True)`` builds a world of simulated Claude Code 2.1.332 sessions
(``agent.sim.session``, real processes) in several config dirs sharing one login, against one
strict simulated server; stops everything with SIGSTOP before credsync's own deadline, lets the
wall clock pass the expiry, resumes every process in one go and watches the first turns. SIGSTOP
is kinder than a real suspend (monotonic clocks keep running), so the agent's side of a real
suspend is tested with a fake clock as well (tests/test_refresh.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.credential import parse_document
from agent.fsutil import read_bytes
from agent.sim.server import OAuthServer
from agent.sim.world import AgentRun, private_env, write_login

LIFETIME_S = 8.0
WINDOW_S = 2.0  # the CLI's 5-minute window, scaled to the lifetime
SESSION_STEP_S = 0.2
WATCH_AFTER_WAKE_S = 3.0  # the turns counted after the wake


@dataclass(frozen=True)
class WakeConfig:
    agent: bool
    dirs: int = 3
    per_dir: int = 2
    lifetime_s: float = LIFETIME_S

    @property
    def label(self) -> str:
        return f"wake, {'with' if self.agent else 'without'} credsync"


@dataclass
class WakeResult:
    label: str
    agent: bool
    forced_relogins: int = 0
    reused_refresh_tokens: int = 0  # spent refresh tokens presented (the server's invalid_grant)
    refused_first_turns: int = 0  # the CLI's transient "another process is refreshing"
    token_requests: int = 0
    by_sessions: int = 0
    revoked_families: int = 0
    wake_to_live_s: float | None = None  # until every dir holds a live token
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _wait(cond: Callable[[], bool], deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _live_everywhere(dirs: Sequence[Path], window_s: float) -> bool:
    now = time.time()
    for d in dirs:
        try:
            raw = read_bytes(d / ".credentials.json", 1_000_000)
        except Exception:
            return False
        cred = parse_document(raw)[0].valid if raw else None
        if cred is None or cred.expires_at <= now + window_s:
            return False
    return True


def _sessions(server: OAuthServer, dirs: Sequence[Path], per_dir: int,
              env: dict[str, str]) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen(
        [sys.executable, "-m", "agent.sim.session", "--config-dir", str(d), "--token-url",
         server.url, "--check-url", server.check_url, "--release", "2.1.332", "--window-s",
         str(WINDOW_S), "--interval-s", str(SESSION_STEP_S), "--duration-s", "300",
         "--name", f"{d.name}-{i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for d in dirs for i in range(per_dir)]


def _reports(sessions: Sequence[subprocess.Popen[str]], errors: list[str]) -> list[dict[str, Any]]:
    out = []
    for proc in sessions:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            errors.append("a session did not stop")
            continue
        lines = stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            errors.append(f"a session failed: {stderr.strip()[-200:]}")
            continue
        out.append(json.loads(lines[-1]))
    return out


def run_wake(root: Path, config: WakeConfig) -> WakeResult:
    result = WakeResult(config.label, config.agent)
    dirs = [root / f"cfg{i}" for i in range(config.dirs)]
    with OAuthServer(access_lifetime_s=config.lifetime_s) as server:
        login = server.issue_login()
        for d in dirs:
            d.mkdir(parents=True)
            write_login(d, login)
        agent = None
        if config.agent:
            agent = AgentRun(root, dirs, {"token_url": server.url, "jitter": 0, "margin_s": 0,
                                          "nominal_lifetime_s": config.lifetime_s,
                                          "client_window_s": WINDOW_S})
            agent.start()
            agent.wait_started()
        sessions = _sessions(server, dirs, config.per_dir, private_env(root / "home"))
        try:
            _run(result, server, dirs, sessions, agent, login["expiresAt"] / 1000)
        finally:
            got = _reports(sessions, result.errors)
            if agent is not None:
                result.errors += agent.stop()
        stats = server.stats()
    result.forced_relogins = sum(int(r["forced_relogins"]) for r in got)
    result.refused_first_turns = sum(int(r["lock_busy"]) for r in got)
    result.by_sessions = sum(int(r["requests"]) for r in got)
    result.reused_refresh_tokens = stats.invalid_grants
    result.token_requests = stats.token_requests
    result.revoked_families = stats.revoked_families
    return result


def _run(result: WakeResult, server: OAuthServer, dirs: Sequence[Path],
         sessions: Sequence[subprocess.Popen[str]], agent: AgentRun | None,
         expires_at: float) -> None:
    # Every session past its start-up and calling the API before the night falls.
    if not _wait(lambda: server.stats().checks >= 3 * len(sessions), 20):
        result.errors.append("the sessions did not start")
        return
    pids = [s.pid for s in sessions] + ([agent.proc.pid] if agent and agent.proc else [])
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    _wait(lambda: time.time() > expires_at + 1.0, 60)  # asleep past the expiry
    woke = time.time()
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    if _wait(lambda: _live_everywhere(dirs, WINDOW_S), 20):
        result.wake_to_live_s = round(time.time() - woke, 3)
    _wait(lambda: time.time() > woke + WATCH_AFTER_WAKE_S, 10)
