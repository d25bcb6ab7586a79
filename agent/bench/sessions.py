"""Sessions: the 12-session world over many token lifetimes, without and with credsync.

``python -m agent.bench.sessions [--lifetimes 20] [--lifetime-s 3] [--json PATH]`` runs the world
of ``agent.sim.world`` (12 simulated Claude Code sessions in 4 config dirs sharing one login,
against one simulated OAuth server) for the current CLI model and the older one (release 2.1.37,
no compare-and-swap), each without and with the real agent. It prints a table and writes the
same figures as JSON. Goal with credsync: 0 forced re-logins, 0 invalid_grant, 1.00 token
requests per rotation. A missed goal makes the exit status 1.

The "wake" case (``agent.sim.wake``): six simulated 2.1.332 sessions in three dirs and the
agent stopped past the token's expiry and resumed together, every session calling at once,
without and with credsync. Goal with credsync: 0 forced re-logins, 0 reused refresh tokens; the
refused first turns and the time from the wake to a live token in every dir are reported.

The "codex" case (``agent.sim.codex_world``): simulated Codex CLI sessions in several homes
sharing one login (Codex takes no lock around a refresh), without and with credsync; then again
with the homes on two accounts. Goal with credsync: 0 reused refresh tokens, 0 forced
re-logins, 1.00 token requests per rotation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.bench import kit
from agent.sim.codex_world import CodexWorldConfig, CodexWorldResult, run_codex_world
from agent.sim.wake import WakeConfig, WakeResult, run_wake
from agent.sim.world import WorldConfig, WorldResult, format_results, run_world

DEFAULT_JSON = Path("bench-results-sessions.json")


@dataclass(frozen=True)
class SessionsConfig:
    sessions: int = 12
    dirs: int = 4
    lifetimes: float = 20.0
    lifetime_s: float = 3.0
    clis: tuple[bool, ...] = (True, False)  # compare-and-swap: the current CLI, then 2.1.37
    wake: bool = True  # the sleep-and-wake case too
    codex: bool = True  # Codex CLI sessions too
    codex_sessions: int = 6
    codex_homes: int = 3
    codex_lifetimes: float = 4.0
    codex_lifetime_s: float = 8.0
    codex_accounts: int = 2  # a second run with the homes on this many accounts (1: none)

    def worlds(self) -> list[WorldConfig]:
        return [WorldConfig(sessions=self.sessions, dirs=self.dirs, lifetimes=self.lifetimes,
                            lifetime_s=self.lifetime_s, cas=cas, agent=agent)
                for cas in self.clis for agent in (False, True)]


def goal_rows(result: kit.Result, run: WorldResult) -> None:
    """The issue's goals apply to the runs with credsync; the others are shown for contrast."""
    judged = run.agent
    per_rotation = run.requests_per_rotation
    result.row(run.label, "forced re-logins", str(run.forced_relogins), "0" if judged else "",
               run.forced_relogins == 0 if judged else None)
    result.row(run.label, "invalid_grant", str(run.invalid_grants), "0" if judged else "",
               run.invalid_grants == 0 if judged else None)
    shown = "-" if per_rotation is None else f"{per_rotation:.2f}"
    result.row(run.label, "token requests per rotation", shown, "1.00" if judged else "",
               (per_rotation == 1.0 and not run.errors) if judged else None)
    for problem in run.errors:
        result.row(run.label, "problem", problem, "none", False)


def wake_rows(result: kit.Result, run: WakeResult) -> None:
    judged = run.agent
    result.row(run.label, "forced re-logins", str(run.forced_relogins), "0" if judged else "",
               run.forced_relogins == 0 if judged else None)
    result.row(run.label, "reused refresh tokens", str(run.reused_refresh_tokens),
               "0" if judged else "", run.reused_refresh_tokens == 0 if judged else None)
    result.row(run.label, "refused first turns", str(run.refused_first_turns))
    result.row(run.label, "token requests (by sessions)",
               f"{run.token_requests} ({run.by_sessions})")
    shown = "-" if run.wake_to_live_s is None else f"{run.wake_to_live_s:.2f} s"
    result.row(run.label, "wake to a live token in every dir", shown)
    for problem in run.errors:
        result.row(run.label, "problem", problem, "none", False)


def codex_rows(result: kit.Result, run: CodexWorldResult) -> None:
    judged = run.agent
    accounts = f", {run.accounts} accounts" if run.accounts > 1 else ""
    label = f"{run.label} ({run.sessions} sessions, {run.homes} homes{accounts})"
    for figure, value in (("reused refresh tokens", run.reused),
                          ("forced re-logins", run.forced_relogins)):
        result.row(label, figure, str(value), "0" if judged else "",
                   value == 0 if judged else None)
    per_rotation = run.requests_per_rotation
    shown = "-" if per_rotation is None else f"{per_rotation:.2f}"
    result.row(label, "token requests per rotation", shown, "1.00" if judged else "",
               (per_rotation == 1.0 and not run.errors) if judged else None)
    result.row(label, "requests by sessions / adopted reloads",
               f"{run.session_requests} / {run.adoptions}")
    for problem in run.errors:
        result.row(label, "problem", problem, "none", False)


def run_codex(result: kit.Result, cfg: SessionsConfig,
              progress: Callable[[str], None] | None) -> list[CodexWorldResult]:
    out = []
    for accounts in sorted({1, cfg.codex_accounts}):
        for agent in (False, True):
            world = CodexWorldConfig(sessions=cfg.codex_sessions, homes=cfg.codex_homes,
                                     lifetimes=cfg.codex_lifetimes,
                                     lifetime_s=cfg.codex_lifetime_s, agent=agent,
                                     accounts=accounts)
            if progress is not None:
                progress(f"sessions: {world.label}: {world.sessions} sessions, {world.homes} "
                         f"homes, {accounts} account(s), {world.lifetimes:g} lifetimes of "
                         f"{world.lifetime_s:g} s")
            out.append(run_codex_world(world))
            codex_rows(result, out[-1])
    return out


def run_wakes(result: kit.Result, progress: Callable[[str], None] | None) -> list[WakeResult]:
    out = []
    for agent in (False, True):
        config = WakeConfig(agent=agent)
        if progress is not None:
            progress(f"sessions: {config.label}: {config.dirs * config.per_dir} sessions, "
                     f"{config.dirs} dirs, asleep past the expiry")
        with tempfile.TemporaryDirectory(prefix="credsync-wake-") as tmp:
            out.append(run_wake(Path(tmp), config))
        wake_rows(result, out[-1])
    return out


def run(cfg: SessionsConfig, progress: Callable[[str], None] | None = None
        ) -> tuple[kit.Result, list[WorldResult]]:
    result = kit.Result("sessions")
    runs: list[WorldResult] = []
    for world in cfg.worlds():
        if progress is not None:
            progress(f"sessions: {world.label}: {world.sessions} sessions, {world.dirs} dirs, "
                     f"{world.lifetimes:g} lifetimes of {world.lifetime_s:g} s")
        outcome = run_world(world)
        runs.append(outcome)
        goal_rows(result, outcome)
    wakes = run_wakes(result, progress) if cfg.wake else []
    codex = run_codex(result, cfg, progress) if cfg.codex else []
    result.data = {"config": {"sessions": cfg.sessions, "dirs": cfg.dirs,
                              "lifetimes": cfg.lifetimes, "lifetime_s": cfg.lifetime_s},
                   "runs": [r.to_json() for r in runs], "wake": [w.to_json() for w in wakes],
                   "codex": [c.to_json() for c in codex]}
    return result, runs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.bench.sessions",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--dirs", type=int, default=4)
    parser.add_argument("--lifetimes", type=float, default=20.0,
                        help="token lifetimes per run (at least 20 for the issue's figure)")
    parser.add_argument("--lifetime-s", type=float, default=3.0,
                        help="access token lifetime in seconds")
    parser.add_argument("--current-only", action="store_true",
                        help="only the current CLI model (skip release 2.1.37)")
    parser.add_argument("--no-wake", action="store_true", help="skip the sleep-and-wake case")
    parser.add_argument("--no-codex", action="store_true", help="skip the Codex CLI case")
    parser.add_argument("--codex-lifetimes", type=float, default=4.0,
                        help="token lifetimes per Codex run")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"where to write the figures (default: ./{DEFAULT_JSON})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = SessionsConfig(args.sessions, args.dirs, args.lifetimes, args.lifetime_s,
                         (True,) if args.current_only else (True, False), not args.no_wake,
                         not args.no_codex, codex_lifetimes=args.codex_lifetimes)
    result, runs = run(cfg, lambda line: print(line, file=sys.stderr, flush=True))
    print(format_results(runs))
    print()
    return kit.report(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
