"""Soak: the simulated world with short token lifetimes, many sessions and the real agent.

    python -m agent.bench.soak --minutes 30 [--sessions 12] [--dirs 4] [--lifetime 30]
                               [--json FILE] [--keep]

One run: the simulated OAuth server (in this process, on 127.0.0.1), ``credsync run`` as a real
process, and ``--sessions`` simulated Claude Code sessions (``agent.sim.session`` processes; every
third one behaves like release 2.1.37, without compare-and-swap) spread over ``--dirs`` config
dirs, plus two sinks. Lifetimes are scaled down: the agent refreshes at half the lifetime, the
sessions' own refresh window is the last sixth of it, so a late agent would show as session
refreshes and races. The agent's resident memory and open file descriptors are sampled from
/proc (Linux only).

Goals (exit 1 when one is missed): no forced re-login, no invalid grant, no revoked family, the
agent alive to the end and every dir holding the newest login, resident memory growth under
5 MB, open file descriptors flat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from agent.credential import Credential, parse_document
from agent.sim.server import OAuthServer

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding ``agent``
RSS_GROWTH_LIMIT_KB = 5 * 1024
STOP_DEADLINE_S = 10.0
START_DEADLINE_S = 20.0


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 30.0
    sessions: int = 12
    dirs: int = 4
    lifetime_s: float = 30.0  # access-token lifetime the server grants
    session_interval_s: float = 0.5
    sample_s: float = 1.0
    workdir: Path | None = None  # default: a fresh temporary directory, removed afterwards
    keep: bool = False

    @property
    def session_window_s(self) -> float:
        return self.lifetime_s / 6  # the CLI's "now + window >= expiresAt" refresh rule, scaled

    def refresh_settings(self, token_url: str) -> dict[str, Any]:
        return {"token_url": token_url, "at_fraction": 0.5, "nominal_lifetime_s": self.lifetime_s,
                "client_window_s": self.session_window_s, "margin_s": self.lifetime_s / 10,
                "timeout_s": 5}


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the agent started
    rss_kb: int
    fds: int


@dataclass
class SoakReport:
    minutes: float
    sessions: int
    dirs: int
    lifetime_s: float
    duration_s: float = 0.0
    rotations: int = 0
    token_requests: int = 0
    invalid_grants: int = 0
    revoked_families: int = 0
    logins: int = 0
    forced_relogins: int = 0
    session_requests: int = 0
    session_refreshes: int = 0
    unauthorized: int = 0
    agent_alive: bool = False
    agent_exit: int | None = None
    stores_consistent: bool = False
    warmup_s: float = 0.0
    rss_start_kb: int = 0
    rss_end_kb: int = 0
    rss_max_kb: int = 0
    fds_start: int = 0
    fds_end: int = 0
    fds_max: int = 0
    log_warnings: int = 0
    log_errors: int = 0
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def rss_growth_kb(self) -> int:
        return self.rss_end_kb - self.rss_start_kb

    @property
    def ok(self) -> bool:
        return not self.problems

    def judge(self) -> None:
        checks = [
            (self.forced_relogins == 0, f"{self.forced_relogins} forced re-logins"),
            (self.invalid_grants == 0, f"{self.invalid_grants} invalid grants"),
            (self.revoked_families == 0, f"{self.revoked_families} revoked token families"),
            (self.agent_alive, "the agent died before the end"),
            (self.agent_exit == 0, f"the agent exited {self.agent_exit} on SIGTERM"),
            (self.stores_consistent, "the stores did not end with the newest login"),
            (self.rss_growth_kb < RSS_GROWTH_LIMIT_KB,
             f"resident memory grew {self.rss_growth_kb} kB"),
            (self.fds_end <= self.fds_start, f"open fds grew {self.fds_start} -> {self.fds_end}"),
            (self.rotations > 0, "the agent never refreshed"),
        ]
        self.problems = [why for good, why in checks if not good]

    def to_json(self, with_samples: bool = False) -> dict[str, Any]:
        obj = asdict(self)
        obj.update(rss_growth_kb=self.rss_growth_kb, ok=self.ok)
        if not with_samples:
            obj.pop("samples")
        return obj

    def render(self) -> str:
        lines = [
            f"soak: {self.duration_s / 60:.1f} min, {self.sessions} sessions in {self.dirs} "
            f"dirs, lifetime {self.lifetime_s:g} s",
            f"  server: {self.rotations} rotations, {self.token_requests} token requests, "
            f"{self.invalid_grants} invalid grants, {self.revoked_families} revoked families",
            f"  sessions: {self.forced_relogins} forced re-logins, {self.session_requests} "
            f"refresh requests, {self.unauthorized} 401s",
            f"  agent RSS: {self.rss_start_kb} kB -> {self.rss_end_kb} kB "
            f"(growth {self.rss_growth_kb} kB, max {self.rss_max_kb} kB, after "
            f"{self.warmup_s:.0f} s warm-up)",
            f"  agent fds: {self.fds_start} -> {self.fds_end} (max {self.fds_max})",
            f"  agent log: {self.log_warnings} warnings, {self.log_errors} errors; "
            f"exit {self.agent_exit}; stores consistent: {self.stores_consistent}",
            "  result: " + ("OK" if self.ok else "FAILED: " + "; ".join(self.problems)),
        ]
        return "\n".join(lines)


def proc_sample(pid: int, t: float) -> Sample | None:
    """Resident memory and open fds of ``pid`` from /proc; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            rss = next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return Sample(t, rss, fds)


def _toml(value: Any) -> str:
    return json.dumps(str(value) if isinstance(value, Path) else value)


def write_config(path: Path, dirs: Sequence[Path], state: Path, log_file: Path,
                 refresh: dict[str, Any], sinks: Sequence[tuple[Path, str]]) -> None:
    lines = ["[agent]", f"state_dir = {_toml(state)}", f"log_file = {_toml(log_file)}",
             "", "[claude]", f"config_dirs = [{', '.join(_toml(d) for d in dirs)}]",
             "keychain = false", "", "[refresh]",
             *(f"{k} = {_toml(v)}" for k, v in refresh.items())]
    for sink, fmt in sinks:
        lines += ["", "[[sinks]]", f"path = {_toml(sink)}", f"format = {_toml(fmt)}"]
    path.write_text("\n".join(lines) + "\n")


def file_credential(config_dir: Path) -> Credential | None:
    try:
        return parse_document((config_dir / ".credentials.json").read_bytes())[0].valid
    except OSError:
        return None


def _wait(cond: Callable[[], bool], deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)  # polling a condition with a deadline
    return True


def _terminate(proc: subprocess.Popen[Any], deadline_s: float = STOP_DEADLINE_S) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        return -9


class SoakWorld:
    """The files, the server and the processes of one soak run."""

    def __init__(self, cfg: SoakConfig, root: Path, server: OAuthServer) -> None:
        self.cfg = cfg
        self.root = root
        self.server = server
        self.dirs = [root / f"cfg{i}" for i in range(cfg.dirs)]
        self.sinks = [(root / "sinks" / "token", "access-token"),
                      (root / "sinks" / "claude" / ".credentials.json", "claude")]
        self.state = root / "state"
        self.log_file = root / "log" / "credsync.log"
        self.config = root / "config.toml"
        self.agent: subprocess.Popen[bytes] | None = None
        self.sessions: list[subprocess.Popen[str]] = []
        self._agent_out: IO[bytes] | None = None

    def prepare(self) -> None:
        for d in self.dirs:
            d.mkdir(parents=True)
        oauth = self.server.issue_login()
        (self.dirs[0] / ".credentials.json").write_text(json.dumps({"claudeAiOauth": oauth}))
        write_config(self.config, self.dirs, self.state, self.log_file,
                     self.cfg.refresh_settings(self.server.url), self.sinks)

    def start_agent(self) -> None:
        # Open for the agent's whole life; closed in close().
        self._agent_out = open(self.root / "agent.stderr", "wb")  # noqa: SIM115
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
            cwd=PACKAGE_ROOT, stdout=self._agent_out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        first = file_credential(self.dirs[0])
        if not _wait(lambda: all(file_credential(d) == first for d in self.dirs)
                     or self.agent is None or self.agent.poll() is not None, START_DEADLINE_S):
            raise RuntimeError("the agent did not fan the login out to every dir")

    def start_sessions(self, duration_s: float) -> None:
        base = self.server.base_url
        for i in range(self.cfg.sessions):
            argv = [sys.executable, "-m", "agent.sim.session",
                    "--config-dir", str(self.dirs[i % len(self.dirs)]),
                    "--token-url", self.server.url, "--check-url", self.server.check_url,
                    "--relogin-url", base + "/_sim/login",
                    "--window-s", str(self.cfg.session_window_s),
                    "--interval-s", str(self.cfg.session_interval_s),
                    "--duration-s", str(duration_s + 60), "--name", f"s{i}"]
            if i % 3 == 2:
                argv.append("--no-cas")
            self.sessions.append(subprocess.Popen(argv, cwd=PACKAGE_ROOT, text=True,
                                                  stdout=subprocess.PIPE,
                                                  stdin=subprocess.DEVNULL))

    def stop_sessions(self) -> list[dict[str, Any]]:
        reports = []
        for proc in self.sessions:
            _terminate(proc)
            out = proc.stdout.read() if proc.stdout is not None else ""
            if proc.stdout is not None:
                proc.stdout.close()
            for line in out.splitlines():
                try:
                    reports.append(json.loads(line))
                except ValueError:
                    continue
        return reports

    def newest_everywhere(self) -> bool:
        creds = [file_credential(d) for d in self.dirs]
        first = creds[0]
        return (first is not None and all(c == first for c in creds)
                and self.server.check_access(first.access_token))

    def close(self) -> None:
        for proc in self.sessions:
            _terminate(proc, 2)
        if self.agent is not None:
            _terminate(self.agent, 2)
        if self._agent_out is not None:
            self._agent_out.close()


def _window(samples: list[Sample], first: bool, fraction: float = 0.2) -> list[Sample]:
    n = max(1, int(len(samples) * fraction))
    return samples[:n] if first else samples[-n:]


def _summarise(report: SoakReport, samples: list[Sample], warm: list[Sample]) -> None:
    report.samples = samples
    if not warm:
        return
    head, tail = _window(warm, True), _window(warm, False)
    report.rss_start_kb = int(statistics.median(s.rss_kb for s in head))
    report.rss_end_kb = int(statistics.median(s.rss_kb for s in tail))
    report.rss_max_kb = max(s.rss_kb for s in warm)
    # The minimum of each window: a refresh in flight holds a socket and lock files for a moment.
    report.fds_start = min(s.fds for s in head)
    report.fds_end = min(s.fds for s in tail)
    report.fds_max = max(s.fds for s in warm)


def _count_log(report: SoakReport, log_file: Path) -> None:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return
    report.log_warnings = text.count(" WARNING ")
    report.log_errors = text.count(" ERROR ")


def _session_totals(report: SoakReport, sessions: list[dict[str, Any]]) -> None:
    for key, attr in (("forced_relogins", "forced_relogins"), ("requests", "session_requests"),
                      ("refreshes", "session_refreshes"), ("unauthorized", "unauthorized")):
        setattr(report, attr, sum(int(s.get(key, 0)) for s in sessions))


def _measure(world: SoakWorld, cfg: SoakConfig, report: SoakReport,
             progress: Callable[[str], None]) -> tuple[list[Sample], list[Sample]]:
    """Sample the agent until the end; the warm-up ends after its second refresh (the HTTP
    client is imported on the first), or at a fifth of the run, whichever comes first."""
    assert world.agent is not None
    started = time.monotonic()
    end = started + cfg.minutes * 60
    warm_from: float | None = None
    samples: list[Sample] = []
    next_note = started + 60
    while time.monotonic() < end:
        now = time.monotonic()
        sample = proc_sample(world.agent.pid, now - started)
        if sample is None or world.agent.poll() is not None:
            break
        samples.append(sample)
        if warm_from is None and (world.server.stats().rotations >= 2
                                  or now - started >= cfg.minutes * 12):
            warm_from = now - started
            report.warmup_s = warm_from
        if now >= next_note:
            stats = world.server.stats()
            progress(f"{(now - started) / 60:.0f} min: {stats.rotations} rotations, "
                     f"{stats.invalid_grants} invalid grants, rss {sample.rss_kb} kB, "
                     f"fds {sample.fds}")
            next_note += 60
        time.sleep(min(cfg.sample_s, max(0.0, end - time.monotonic())))
    warm = [s for s in samples if warm_from is not None and s.t >= warm_from]
    return samples, warm


def run_soak(cfg: SoakConfig, progress: Callable[[str], None] | None = None) -> SoakReport:
    say = progress or (lambda _msg: None)
    report = SoakReport(cfg.minutes, cfg.sessions, cfg.dirs, cfg.lifetime_s)
    root = cfg.workdir or Path(tempfile.mkdtemp(prefix="credsync-soak-"))
    began = time.monotonic()
    with OAuthServer(access_lifetime_s=cfg.lifetime_s) as server:
        world = SoakWorld(cfg, root, server)
        try:
            world.prepare()
            world.start_agent()
            world.start_sessions(cfg.minutes * 60)
            say(f"running in {root}: agent pid {world.agent.pid if world.agent else '-'}")
            samples, warm = _measure(world, cfg, report, say)
            _session_totals(report, world.stop_sessions())
            assert world.agent is not None
            report.agent_alive = world.agent.poll() is None
            # Sessions stopped: the agent must leave every dir with the newest, live login.
            report.stores_consistent = _wait(world.newest_everywhere, 10)
            report.agent_exit = _terminate(world.agent)
            _summarise(report, samples, warm)
        finally:
            world.close()
        stats = server.stats()
    report.duration_s = time.monotonic() - began
    report.rotations, report.token_requests = stats.rotations, stats.token_requests
    report.invalid_grants, report.revoked_families = stats.invalid_grants, stats.revoked_families
    report.logins = stats.logins
    _count_log(report, world.log_file)
    report.judge()
    if cfg.workdir is None and not cfg.keep:
        shutil.rmtree(root, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.bench.soak",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--dirs", type=int, default=4)
    parser.add_argument("--lifetime", type=float, default=30.0,
                        help="access-token lifetime in seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    cfg = SoakConfig(minutes=args.minutes, sessions=args.sessions, dirs=args.dirs,
                     lifetime_s=args.lifetime, keep=args.keep)
    report = run_soak(cfg, lambda msg: print(msg, file=sys.stderr, flush=True))
    print(report.render(), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(with_samples=True), indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
