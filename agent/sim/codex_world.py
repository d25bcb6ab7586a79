"""A world of Codex CLI sessions in several ``CODEX_HOME``s sharing one login, without or with
credsync.

N simulated Codex sessions (``CodexSession``, one thread each: Codex takes no lock around a
refresh, so nothing but the sessions' own timing orders them) spread over M homes that start with
ONE login copied into every home's ``auth.json``, against ONE ``OAuthServer(style="codex")``
with a short access lifetime (6-20 s), for a number of lifetimes. Every session asks the server
whether its access token still works, so an expiry or a revoked family is a 401.

Scaling. Codex refreshes 5 minutes before ``exp``; here its window is ``window_fraction`` of
the lifetime. ``latency_s`` slows every token answer (the note's experiment 2 slowed the
endpoint to 2.5 s): sessions of one home that reach their window while a refresh is in flight
redeem the same token. With ``agent=True`` the real ``credsync run`` runs beside them with a
``[codex]`` table naming the homes (issue 16's interface) and ``[claude] config_dirs = []``.

A forced re-login is a session whose snapshot failed permanently (``refresh_token_reused``,
``_invalidated``, a 401, the account guard); the "user" then signs in again in that home.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.clock import SystemClock
from agent.sim.codex_session import CodexSession
from agent.sim.codex_store import CodexStore, login_document
from agent.sim.server import OAuthServer
from agent.sim.world import AgentRun, Stepper, drive

__all__ = ["CodexWorld", "CodexWorldConfig", "CodexWorldResult", "run_codex_world"]

ACCOUNT_ID = "sim-account"
USER_ID = "sim-user"


@dataclass(frozen=True)
class CodexWorldConfig:
    sessions: int = 6
    homes: int = 3
    lifetimes: float = 3.0
    lifetime_s: float = 8.0
    agent: bool = False
    step_s: float = 0.05  # how often every session takes a turn
    window_fraction: float = 0.25  # Codex's 5 minutes, scaled
    latency_s: float = 0.1  # added to every token answer
    relogin: bool = True  # the user signs in again after a forced re-login
    margin_fraction: float = 0.10
    at_fraction: float = 0.55
    jitter: float = 0.02
    accounts: int = 1  # home i holds a login of account i % accounts

    def __post_init__(self) -> None:
        if self.sessions < 1 or self.homes < 1:
            raise ValueError("a world needs at least one session and one home")
        if not 1 <= self.accounts <= self.homes:
            raise ValueError("accounts must be between 1 and the number of homes")
        if self.lifetime_s <= 0 or self.lifetimes <= 0 or self.step_s <= 0:
            raise ValueError("lifetime_s, lifetimes and step_s must be positive")
        if not 0 < self.window_fraction < 1 or self.latency_s < 0:
            raise ValueError("window_fraction must be in (0, 1), latency_s not negative")

    @property
    def window_s(self) -> float:
        return self.lifetime_s * self.window_fraction

    @property
    def label(self) -> str:
        return f"{'with' if self.agent else 'without'} credsync, Codex CLI"

    def refresh_settings(self, token_url: str) -> dict[str, object]:
        """The agent's ``[refresh]`` table, scaled to the world's lifetime."""
        return {"enabled": True, "token_url": token_url, "at_fraction": self.at_fraction,
                "jitter": self.jitter, "client_window_s": self.window_s,
                "margin_s": self.lifetime_s * self.margin_fraction,
                "nominal_lifetime_s": self.lifetime_s, "timeout_s": 5}


@dataclass(frozen=True)
class CodexWorldResult:
    label: str
    agent: bool
    sessions: int
    homes: int
    lifetimes: float
    lifetime_s: float
    forced_relogins: int  # snapshots that failed permanently
    reused: int  # refresh_token_reused answers the sessions got
    invalidated: int  # refresh_token_invalidated answers the sessions got
    server_reused: int  # spent tokens presented again, as the server counted them
    invalid_grants: int  # every refusal, as the server counted them
    token_requests: int
    rotations: int
    revoked_families: int
    session_requests: int  # token requests the sessions sent themselves
    adoptions: int  # guarded reloads that took another writer's login, sending nothing
    unauthorized: int  # API calls with a dead access token
    logins: int  # the first login plus every re-login
    wall_s: float
    accounts: int = 1
    errors: tuple[str, ...] = ()

    @property
    def requests_per_rotation(self) -> float | None:
        return self.token_requests / self.rotations if self.rotations else None

    def to_json(self) -> dict[str, Any]:
        obj = asdict(self)
        obj["errors"] = list(self.errors)
        obj["requests_per_rotation"] = self.requests_per_rotation
        return obj


class CodexWorld:
    def __init__(self, config: CodexWorldConfig, root: Path) -> None:
        self.config = config
        self.root = root
        self.clock = SystemClock()  # real time: the server and the agent run on it too

    def homes(self) -> list[Path]:
        return [self.root / "codex" / f"home{i}" for i in range(self.config.homes)]

    def account_of(self, home_index: int) -> str:
        if self.config.accounts == 1:
            return ACCOUNT_ID
        return f"{ACCOUNT_ID}-{home_index % self.config.accounts}"

    def _log_in(self, server: OAuthServer, homes: Sequence[Path], at: float) -> None:
        """One login per account, saved in each of its homes as Codex saves it."""
        logins: dict[str, Mapping[str, Any]] = {}
        for i, home in enumerate(homes):
            account = self.account_of(i)
            if account not in logins:
                logins[account] = server.issue_login(at, account_id=account, user_id=USER_ID)
            CodexStore(home).save(_login_saver(logins[account], at))

    def run(self) -> CodexWorldResult:
        started = time.monotonic()
        cfg = self.config
        homes = self.homes()
        for home in homes:
            home.mkdir(parents=True, exist_ok=True)
        errors: list[str] = []
        stop = threading.Event()
        server = OAuthServer(style="codex", access_lifetime_s=cfg.lifetime_s, clock=self.clock)
        if cfg.latency_s > 0:
            def slow_answer() -> None:
                stop.wait(cfg.latency_s)  # latency, not synchronisation: ends on stop

            server.on_token_request = slow_answer
        sessions: list[CodexSession] = []
        with server:
            agent = self._agent(server, homes) if cfg.agent else None
            try:
                login_at = self.clock.now()
                if cfg.accounts > 1:
                    # The user logged in to each account before credsync started: it sorts
                    # the homes by account when it starts.
                    self._log_in(server, homes, login_at)
                if agent is not None:
                    agent.start()
                    agent.wait_started()
                if cfg.accounts == 1:
                    login_at = self.clock.now()
                    self._log_in(server, homes, login_at)
                sessions = self._sessions(homes, server)
                self._drive(sessions, stop, login_at + cfg.lifetimes * cfg.lifetime_s, errors)
            finally:
                stop.set()
                if agent is not None:
                    errors += agent.stop()
            return self._result(server, sessions, time.monotonic() - started, errors)

    def _agent(self, server: OAuthServer, homes: Sequence[Path]) -> AgentRun:
        codex = {"homes": [str(h) for h in homes], "token_url": server.url,
                 "client_id": server.client_id, "keychain": False,
                 "client_window_s": self.config.window_s}
        return AgentRun(self.root, [], self.config.refresh_settings(server.url), codex=codex)

    def _sessions(self, homes: Sequence[Path], server: OAuthServer) -> list[CodexSession]:
        def relogin_as(account: str) -> Callable[[float], Mapping[str, Any]]:
            def relogin(now: float) -> Mapping[str, Any]:
                return server.issue_login(now, account_id=account, user_id=USER_ID)
            return relogin

        cfg = self.config
        return [CodexSession(homes[i % len(homes)], server.url, clock=self.clock,
                             check=server.check_access,
                             relogin=relogin_as(self.account_of(i % len(homes)))
                             if cfg.relogin else None,
                             window_s=cfg.window_s, http_timeout_s=5.0,
                             name=f"c{i}@{homes[i % len(homes)].name}")
                for i in range(cfg.sessions)]

    def _drive(self, sessions: Sequence[CodexSession], stop: threading.Event, until: float,
               errors: list[str]) -> None:
        threads = [Stepper(f"codex:{s.name}", s.turn, stop, self.config.step_s, errors,
                           first=s.start) for s in sessions]
        drive(threads, stop, until, self.clock.now, errors)

    def _result(self, server: OAuthServer, sessions: Sequence[CodexSession], wall_s: float,
                errors: list[str]) -> CodexWorldResult:
        stats = server.stats()
        cfg = self.config

        def total(name: str) -> int:
            return sum(int(getattr(s.counters, name)) for s in sessions)

        return CodexWorldResult(
            label=cfg.label, agent=cfg.agent, sessions=cfg.sessions, homes=cfg.homes,
            lifetimes=cfg.lifetimes, lifetime_s=cfg.lifetime_s,
            forced_relogins=total("forced_relogins"), reused=total("reused"),
            invalidated=total("invalidated"), server_reused=stats.reused,
            invalid_grants=stats.invalid_grants, token_requests=stats.token_requests,
            rotations=stats.rotations, revoked_families=stats.revoked_families,
            session_requests=total("requests"), adoptions=total("adoptions"),
            unauthorized=total("unauthorized"), logins=stats.logins, wall_s=wall_s,
            accounts=cfg.accounts, errors=tuple(errors))


def _login_saver(tokens: Mapping[str, Any], at: float
                 ) -> Callable[[Mapping[str, Any] | None], dict[str, Any]]:
    return lambda _: login_document(tokens, at)


def run_codex_world(config: CodexWorldConfig, parent: Path | None = None) -> CodexWorldResult:
    """Run one world in a fresh temporary directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="credsync-codex-world-", dir=parent) as tmp:
        return CodexWorld(config, Path(tmp)).run()
