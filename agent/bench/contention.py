"""Contention: many ``credsync token`` processes at the refresh deadline, all at once.

``python -m agent.bench.contention [--processes 16] [--rounds 5] [--json PATH]``: in each round,
16 real processes run ``credsync token`` at the same moment while the login in 4 config dirs is
inside its refresh window (5 minutes from expiry), against the simulated OAuth server. Exactly one
token request may reach the server, and every process must print the same new access token. The
baseline, measured in the same run and alternated with it round by round, is the same 16
processes with a fresh login (nothing to refresh). Reported: token requests per round, and the
p50 and p99 of the processes' latency (start to exit), as times and as ratios to the baseline.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.bench import kit
from agent.credential import parse_document
from agent.sim.server import OAuthServer
from agent.sim.world import private_env, write_agent_config, write_login

DEFAULT_JSON = Path("bench-results-contention.json")
DUE_IN_S = 200.0  # inside the CLI's 5-minute window: every process finds the token due
FRESH_IN_S = 7 * 3600.0  # 7 h left of a nominal 8 h: not due for hours
PROCESS_DEADLINE_S = 60.0


@dataclass(frozen=True)
class ContentionConfig:
    processes: int = 16
    rounds: int = 5
    dirs: int = 4


@dataclass
class Round:
    case: str  # "due" or "fresh"
    latencies_s: list[float] = field(default_factory=list)
    token_requests: int = 0
    invalid_grants: int = 0
    problems: list[str] = field(default_factory=list)


def _spawn_all(argv: Sequence[str], env: dict[str, str], cwd: Path,
               n: int) -> tuple[list[subprocess.Popen[str]], list[float]]:
    """Start ``n`` processes back to back; each one's latency is timed from its own start."""
    procs: list[subprocess.Popen[str]] = []
    latencies = [0.0] * n
    waiters: list[threading.Thread] = []

    def waiter(i: int, proc: subprocess.Popen[str], started: float) -> None:
        try:
            proc.wait(timeout=PROCESS_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        latencies[i] = time.monotonic() - started

    for i in range(n):
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        waiters.append(threading.Thread(target=waiter, args=(i, proc, started), daemon=True))
        waiters[-1].start()
    for thread in waiters:
        thread.join(PROCESS_DEADLINE_S + 10)
    return procs, latencies


def one_round(server: OAuthServer, root: Path, case: str, cfg: ContentionConfig) -> Round:
    dirs = [root / "claude" / f"cfg{i}" for i in range(cfg.dirs)]
    oauth = server.issue_login()
    oauth["expiresAt"] = round((time.time() + (DUE_IN_S if case == "due" else FRESH_IN_S)) * 1000)
    for d in dirs:
        d.mkdir(parents=True)
        write_login(d, oauth)
    config = write_agent_config(root / "credsync.toml", dirs, root / "state",
                                root / "credsync.log",
                                {"enabled": True, "token_url": server.url, "jitter": 0})
    env = private_env(root / "home")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached, not recompiled
    before = server.stats()
    argv = [sys.executable, "-m", "agent.cli", "token", "--config", str(config)]
    procs, latencies = _spawn_all(argv, env, root, cfg.processes)
    after = server.stats()
    out = Round(case, latencies, after.token_requests - before.token_requests,
                after.invalid_grants - before.invalid_grants)
    printed: set[str] = set()
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=5)
        printed.add(stdout.strip())
        if proc.returncode != 0:
            out.problems.append(f"a process exited {proc.returncode}: {stderr.strip()[:200]}")
    on_disk = parse_document((dirs[0] / ".credentials.json").read_bytes())[0].valid
    expected = on_disk.access_token if on_disk is not None else None
    if printed != {expected}:
        out.problems.append(f"{len(printed)} different tokens printed, not the one on disk")
    if case == "due" and expected == oauth["accessToken"]:
        out.problems.append("the due token was not refreshed")
    return out


def run(cfg: ContentionConfig, progress: Callable[[str], None] | None = None) -> kit.Result:
    result = kit.Result("contention")
    rounds: list[Round] = []
    base = kit.workdir("contention")
    try:
        with OAuthServer(access_lifetime_s=8 * 3600) as server:
            for n in range(cfg.rounds):
                # Alternate which case goes first: a machine getting busier hurts neither more.
                for case in (("due", "fresh") if n % 2 == 0 else ("fresh", "due")):
                    if progress is not None:
                        progress(f"contention: round {n + 1}/{cfg.rounds}, {case} token, "
                                 f"{cfg.processes} processes")
                    rounds.append(one_round(server, base / f"r{n}-{case}", case, cfg))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    summarise(result, rounds, cfg)
    return result


def summarise(result: kit.Result, rounds: Sequence[Round], cfg: ContentionConfig) -> None:
    due = [r for r in rounds if r.case == "due"]
    fresh = [r for r in rounds if r.case == "fresh"]
    lat = {case: [x for r in rs for x in r.latencies_s] for case, rs in
           (("due", due), ("fresh", fresh))}
    stats = {case: kit.summary_ms(values) for case, values in lat.items()}
    label = f"{cfg.processes} x credsync token"
    requests = [r.token_requests for r in due]
    result.row(f"{label}, token due", "token requests per round",
               ", ".join(map(str, requests)), "exactly 1", all(n == 1 for n in requests))
    result.row(f"{label}, token due", "invalid_grant", str(sum(r.invalid_grants for r in due)),
               "0", all(r.invalid_grants == 0 for r in due))
    result.row(f"{label}, fresh token", "token requests per round",
               ", ".join(str(r.token_requests) for r in fresh), "0",
               all(r.token_requests == 0 for r in fresh))
    for case, name in (("due", "token due"), ("fresh", "fresh token (baseline)")):
        result.row(f"{label}, {name}", "latency p50 / p99",
                   f"{kit.ms(stats[case]['median_ms'])} / {kit.ms(stats[case]['p99_ms'])}")
    for figure, key in (("p50", "median_ms"), ("p99", "p99_ms")):
        ratio = stats["due"][key] / stats["fresh"][key] if stats["fresh"][key] else float("nan")
        result.row(f"{label}, due vs baseline", f"latency {figure} ratio", f"{ratio:.2f}x")
    for r in rounds:
        for problem in r.problems:
            result.row(f"{label}, {r.case}", "problem", problem, "none", False)
    result.data = {"config": {"processes": cfg.processes, "rounds": cfg.rounds,
                              "dirs": cfg.dirs},
                   "latency": stats,
                   "rounds": [{"case": r.case, "token_requests": r.token_requests,
                               "invalid_grants": r.invalid_grants,
                               "latencies_ms": [round(x * 1000, 3) for x in r.latencies_s],
                               "problems": r.problems} for r in rounds]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.bench.contention",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dirs", type=int, default=4)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"where to write the figures (default: ./{DEFAULT_JSON})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(ContentionConfig(args.processes, args.rounds, args.dirs),
                 lambda line: print(line, file=sys.stderr, flush=True))
    return kit.report(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
