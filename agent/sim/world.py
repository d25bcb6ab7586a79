"""A world of Claude Code sessions sharing one login, run without or with credsync.

N simulated sessions (``SimSession``, one thread each) spread over M config dirs that start with
ONE login copied into every dir, against ONE ``OAuthServer`` with a short access lifetime, for a
number of lifetimes. With ``agent=True`` the real agent runs beside them: ``credsync run`` as a
process, with a config written into the world's directory. Everything is real except the pace:
files, lock directories, inotify, HTTP to the token endpoint, and every session asks the server
whether its access token still works (``check=server.check_access``), so an expiry is an expiry.

Scaling. The CLI refreshes 5 minutes before an 8-hour token expires; here the sessions' window is
``window_fraction`` of the lifetime and the agent's settings scale with it: it refreshes at
``at_fraction`` (+- ``jitter``) of the lifetime and never later than ``window + margin`` before
expiry, so a healthy agent always acts before any session's window opens.

A forced re-login is a session clearing its store after ``invalid_grant``; the "user" then logs
in again at once in that session's dir (a new login from the server), which the agent, when
present, propagates to the other dirs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.clock import Clock, SystemClock
from agent.fsutil import atomic_write
from agent.sim.server import OAuthServer, RequestRecord
from agent.sim.session import CREDENTIALS_FILE, SimSession

__all__ = ["AgentRun", "World", "WorldConfig", "WorldResult", "format_results", "private_env",
           "render_table", "run_world", "write_agent_config"]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory that holds ``agent``
AGENT_START_S = 30.0  # bound on the agent's first round (a cold process on a busy machine)
JOIN_S = 30.0  # bound on a session thread finishing its step (lock waits, HTTP timeouts)
# Variables that would point the agent or the sessions at the user's real setup.
_FOREIGN_ENV = ("CLAUDE_CONFIG_DIR", "CLAUDE_SECURESTORAGE_CONFIG_DIR", "CODEX_HOME")


@dataclass(frozen=True)
class WorldConfig:
    sessions: int = 12
    dirs: int = 4
    lifetimes: float = 6.0
    lifetime_s: float = 3.0
    agent: bool = False
    cas: bool = True  # the current CLI (compare-and-swap save); False: release 2.1.37
    mixed: bool = False  # alternate current and older CLI sessions (overrides ``cas``)
    step_s: float = 0.05  # how often every session steps (reads, makes an API call)
    window_fraction: float = 0.15
    margin_fraction: float = 0.10
    at_fraction: float = 0.55
    jitter: float = 0.02

    def __post_init__(self) -> None:
        if self.sessions < 1 or self.dirs < 1:
            raise ValueError("a world needs at least one session and one config dir")
        if self.lifetime_s <= 0 or self.lifetimes <= 0 or self.step_s <= 0:
            raise ValueError("lifetime_s, lifetimes and step_s must be positive")
        latest = 1 - self.window_fraction - self.margin_fraction
        if not 0 < self.at_fraction + self.jitter < latest:
            raise ValueError("the agent must be due before the sessions' window and margin")

    @property
    def window_s(self) -> float:
        return self.lifetime_s * self.window_fraction

    @property
    def cli(self) -> str:
        return "mixed" if self.mixed else ("current" if self.cas else "older")

    @property
    def label(self) -> str:
        return f"{'with' if self.agent else 'without'} credsync, {self.cli} CLI"

    def cas_of(self, index: int) -> bool:
        return index % 2 == 0 if self.mixed else self.cas

    def refresh_settings(self, token_url: str) -> dict[str, object]:
        """The agent's ``[refresh]`` section, scaled to the world's lifetime."""
        return {
            "enabled": True,
            "token_url": token_url,
            "at_fraction": self.at_fraction,
            "jitter": self.jitter,
            "client_window_s": self.window_s,
            "margin_s": self.lifetime_s * self.margin_fraction,
            "nominal_lifetime_s": self.lifetime_s,
            "timeout_s": 5,
        }


@dataclass(frozen=True)
class WorldResult:
    label: str
    agent: bool
    cli: str
    sessions: int
    dirs: int
    lifetimes: float
    lifetime_s: float
    forced_relogins: int  # sessions that cleared their store after invalid_grant
    invalid_grants: int  # as the server counted them
    token_requests: int
    rotations: int
    revoked_families: int
    session_requests: int  # token requests the sessions sent themselves
    unauthorized: int  # API calls the sessions made with a dead access token
    logins: int  # the first login plus every re-login
    min_lead_s: float | None  # how long before the sessions' window the agent rotated, at worst
    wall_s: float
    errors: tuple[str, ...] = ()

    @property
    def requests_per_rotation(self) -> float | None:
        return self.token_requests / self.rotations if self.rotations else None

    def to_json(self) -> dict[str, Any]:
        obj = asdict(self)
        obj["errors"] = list(self.errors)
        obj["requests_per_rotation"] = self.requests_per_rotation
        return obj


def private_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which credsync can only see the world: its own HOME and XDG dirs,
    no CREDSYNC_* overrides, no CLAUDE_CONFIG_DIR or CODEX_HOME, and this very copy of the
    package."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.upper().startswith("CREDSYNC_") and k not in _FOREIGN_ENV}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_STATE_HOME=str(home / ".local" / "state"),
               XDG_DATA_HOME=str(home / ".local" / "share"), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH"))
                                        if p)
    return env


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def write_agent_config(path: Path, config_dirs: Sequence[Path], state_dir: Path,
                       log_file: Path, refresh: Mapping[str, object],
                       codex: Mapping[str, object] | None = None) -> Path:
    """A credsync config that touches nothing but the world: no keychain, no notifications;
    ``codex``, when given, is the ``[codex]`` table (issue 16's interface)."""
    sections: dict[str, Mapping[str, object]] = {
        "agent": {"state_dir": state_dir, "log_file": log_file, "log_level": "info"},
        "claude": {"config_dirs": list(config_dirs), "keychain": False},
        "refresh": refresh,
        "notify": {"desktop": False},
    }
    if codex is not None:
        sections["codex"] = codex
    lines: list[str] = []
    for name, values in sections.items():
        lines += [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""]
    path.write_text("\n".join(lines))
    return path


def write_login(config_dir: Path, oauth: Mapping[str, Any]) -> None:
    atomic_write(config_dir / CREDENTIALS_FILE,
                 json.dumps({"claudeAiOauth": dict(oauth)}, indent=2).encode())


class AgentRun:
    """``credsync run`` as a real process, confined to the world's directory."""

    def __init__(self, root: Path, config_dirs: Sequence[Path], refresh: Mapping[str, object],
                 python: str = sys.executable,
                 codex: Mapping[str, object] | None = None) -> None:
        self.state_dir = root / "state"
        self.log_path = root / "agent.log"
        self.config = write_agent_config(root / "credsync.toml", config_dirs, self.state_dir,
                                         root / "credsync.log", refresh, codex)
        self.env = private_env(root / "home")
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "agent.cli", "run", "--config", str(self.config)],
                cwd=self.state_dir.parent, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)

    def rounds(self) -> int:
        """Rounds done by the lane that has done the fewest (an agent has a scope per login:
        a Codex account each)."""
        try:
            scopes = [p for p in (self.state_dir / "logins").iterdir() if p.is_dir()]
        except OSError:
            scopes = []
        return min(self._rounds(d) for d in scopes) if scopes else self._rounds(self.state_dir)

    @staticmethod
    def _rounds(scope: Path) -> int:
        try:
            value = json.loads((scope / "agent.json").read_text()).get("rounds", 0)
        except (OSError, ValueError, AttributeError):
            return 0
        return value if isinstance(value, int) else 0

    def wait_started(self, deadline_s: float = AGENT_START_S) -> None:
        end = time.monotonic() + deadline_s
        while self.rounds() < 1:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the agent exited early: {self.tail()}")
            if time.monotonic() > end:
                raise RuntimeError(f"the agent did not start within {deadline_s:g} s")
            time.sleep(0.02)

    def tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def stop(self, deadline_s: float = 10.0) -> list[str]:
        """SIGTERM, then a bounded wait; a problem is returned, not raised (the run is over)."""
        if self.proc is None:
            return []
        if self.proc.poll() is not None:
            return [f"the agent had exited (rc {self.proc.returncode}): {self.tail()}"]
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            return ["the agent did not stop on SIGTERM"]
        return [] if rc == 0 else [f"the agent exited with rc {rc}: {self.tail()}"]


class Stepper(threading.Thread):
    """Has one simulated session act every ``step_s`` until told to stop (after ``first``, if
    given); an exception ends it and is reported, named ``label``, in ``errors``."""

    def __init__(self, label: str, act: Callable[[], object], stop: threading.Event,
                 step_s: float, errors: list[str],
                 first: Callable[[], object] | None = None) -> None:
        super().__init__(name=label, daemon=True)
        self.label = label
        self.act = act
        self.first = first
        self.stop = stop
        self.step_s = step_s
        self.errors = errors

    def run(self) -> None:
        try:
            if self.first is not None:
                self.first()
            while not self.stop.is_set():
                self.act()
                self.stop.wait(self.step_s)
        except Exception as exc:  # a broken session is a finding, reported with the run
            self.errors.append(f"{self.label}: {type(exc).__name__}: {exc}")


def _stepping(session: SimSession, now: Callable[[], float]) -> Callable[[], object]:
    return lambda: session.step(now())


def drive(threads: Sequence[Stepper], stop: threading.Event, until: float,
          now: Callable[[], float], errors: list[str]) -> None:
    """Run the sessions' threads until ``until`` (wall clock), then stop and join each
    (bounded by JOIN_S, a thread still running then is reported)."""
    for thread in threads:
        thread.start()
    try:
        while (left := until - now()) > 0:
            stop.wait(min(left, 0.5))
    finally:
        stop.set()
        for thread in threads:
            thread.join(JOIN_S)
            if thread.is_alive():
                errors.append(f"{thread.name} did not finish its turn in {JOIN_S:g} s")


def min_lead(log: Sequence[RequestRecord], login_at: float, lifetime_s: float,
             window_s: float) -> float | None:
    """For one unbroken token family: the smallest time between a rotation and the opening of
    the sessions' window for the token it replaced (negative: a session got there first)."""
    times = [r.time for r in log if r.outcome == "rotated"]
    issued = [login_at, *times][:len(times)]  # each rotation replaced the previous token
    leads = [i + lifetime_s - window_s - t for i, t in zip(issued, times, strict=True)]
    return min(leads) if leads else None


@dataclass
class World:
    config: WorldConfig
    root: Path
    python: str = sys.executable
    # Real time only: the agent is another process on the system clock, and so is the server.
    clock: Clock = field(default_factory=SystemClock, init=False)

    def config_dirs(self) -> list[Path]:
        # Siblings in one parent: the CLI's legacy ``<dir>.lock`` lands next to them, in the world.
        return [self.root / "claude" / f"cfg{i}" for i in range(self.config.dirs)]

    def run(self) -> WorldResult:
        started = time.monotonic()
        dirs = self.config_dirs()
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        errors: list[str] = []
        with OAuthServer(access_lifetime_s=self.config.lifetime_s, clock=self.clock) as server:
            agent = None
            if self.config.agent:
                agent = AgentRun(self.root, dirs, self.config.refresh_settings(server.url),
                                 self.python)
            try:
                if agent is not None:
                    # Started on empty dirs: it learns of the login the way it would in life,
                    # from inotify, and the whole first lifetime is the world's.
                    agent.start()
                    agent.wait_started()
                login_at = self.clock.now()
                login = server.issue_login(login_at)
                for d in dirs:
                    write_login(d, login)
                sessions = self._sessions(dirs, server)
                self._drive(sessions, login_at + self.config.lifetimes * self.config.lifetime_s,
                            errors)
            finally:
                if agent is not None:
                    errors += agent.stop()
            return self._result(server, sessions, login_at, time.monotonic() - started, errors)

    def _sessions(self, dirs: Sequence[Path], server: OAuthServer) -> list[SimSession]:
        def relogin(now: float) -> Mapping[str, Any]:
            return server.issue_login(now)  # the user logs in again in that session

        return [SimSession(dirs[i % len(dirs)], server.url, cas=self.config.cas_of(i),
                           window_s=self.config.window_s, check=server.check_access,
                           relogin=relogin, http_timeout_s=5.0,
                           name=f"s{i}@{dirs[i % len(dirs)].name}")
                for i in range(self.config.sessions)]

    def _drive(self, sessions: Sequence[SimSession], until: float, errors: list[str]) -> None:
        stop = threading.Event()
        now = self.clock.now
        threads = [Stepper(f"sim:{s.name}", _stepping(s, now), stop, self.config.step_s,
                           errors) for s in sessions]
        drive(threads, stop, until, now, errors)

    def _result(self, server: OAuthServer, sessions: Sequence[SimSession], login_at: float,
                wall_s: float, errors: list[str]) -> WorldResult:
        stats = server.stats()
        cfg = self.config
        one_family = stats.logins == 1 and stats.invalid_grants == 0
        lead = min_lead(server.log(), login_at, cfg.lifetime_s, cfg.window_s) \
            if one_family else None
        return WorldResult(
            label=cfg.label, agent=cfg.agent, cli=cfg.cli, sessions=cfg.sessions,
            dirs=cfg.dirs, lifetimes=cfg.lifetimes, lifetime_s=cfg.lifetime_s,
            forced_relogins=sum(s.counters.forced_relogins for s in sessions),
            invalid_grants=stats.invalid_grants, token_requests=stats.token_requests,
            rotations=stats.rotations, revoked_families=stats.revoked_families,
            session_requests=sum(s.counters.requests for s in sessions),
            unauthorized=sum(s.counters.unauthorized for s in sessions),
            logins=stats.logins, min_lead_s=lead, wall_s=wall_s, errors=tuple(errors))


def run_world(config: WorldConfig, parent: Path | None = None) -> WorldResult:
    """Run one world in a fresh temporary directory (removed afterwards)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="credsync-world-", dir=parent) as tmp:
        return World(config, Path(tmp)).run()


# -- presenting results ------------------------------------------------------------------------

Column = tuple[str, Callable[[WorldResult], object]]
SUMMARY_COLUMNS: tuple[Column, ...] = (
    ("run", lambda r: r.label),
    ("forced re-logins", lambda r: r.forced_relogins),
    ("invalid_grant", lambda r: r.invalid_grants),
    ("token requests per rotation", lambda r: r.requests_per_rotation),
)
FULL_COLUMNS: tuple[Column, ...] = (
    *SUMMARY_COLUMNS[:3],
    ("token requests", lambda r: r.token_requests),
    ("rotations", lambda r: r.rotations),
    ("req/rotation", lambda r: r.requests_per_rotation),
    ("revoked families", lambda r: r.revoked_families),
    ("by sessions", lambda r: r.session_requests),
    ("401s", lambda r: r.unauthorized),
    ("min lead s", lambda r: r.min_lead_s),
    ("wall s", lambda r: r.wall_s),
)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [list(headers), *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]),
                      *(line(r) for r in cells[1:])])


def format_results(results: Sequence[WorldResult],
                   columns: Sequence[Column] = FULL_COLUMNS) -> str:
    return render_table([h for h, _ in columns], [[get(r) for _, get in columns]
                                                  for r in results])
