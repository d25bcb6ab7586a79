"""Start-up: ``credsync token`` with a fresh token, as a cold process, against ``python -c pass``.

    python -m agent.bench.startup [--quick] [--runs N] [--json FILE]

Both commands run as new processes, alternately (a noisy machine slows both alike), with
bytecode caching on as in an installed package; medians over the runs. The config holds three
config dirs with a fresh login (far from its refresh deadline, refresh on). Two cases: without the
keychain (the goal: under 3x the floor) and with the real Secret Service keychain on a private
D-Bus. The steady state is measured: the first call after a change runs the full command and
leaves the token note (``agent.cli.tokennote``) that the next ones answer from; that first call is
measured too (the note removed before each run). A second floor is ``python -c 'import json'``,
the one standard module the fast path needs. The heaviest imports of the command are listed from
``python -X importtime``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bench import kit
from agent.bench.propagation import cli_write
from agent.cli.tokennote import note_file
from agent.credential import Credential
from agent.stores.keychain import system_backend

BENCH = "startup"
GOAL_RATIO = 3.0
FRESH_FOR_S = 7 * 3600  # nominal lifetime 8 h: the refresh deadline is hours away
TOP_IMPORTS = 8
# The standard library module the fast path cannot do without: a second floor.
STDLIB = "json"


@dataclass(frozen=True)
class StartupConfig:
    runs: int = 20
    keychain_case: bool = True

    @classmethod
    def quick(cls) -> StartupConfig:
        return cls(runs=10)

    @classmethod
    def smoke(cls) -> StartupConfig:
        return cls(runs=2, keychain_case=False)


def fresh_cred() -> Credential:
    import secrets

    tag = secrets.token_hex(12)
    return Credential.build(f"sk-ant-oat01-start-{tag}", f"sk-ant-ort01-start-{tag}",
                            int((time.time() + FRESH_FOR_S) * 1000), scopes=["user:inference"])


def timed(argv: Sequence[str], env: Mapping[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(list(argv), cwd=kit.PACKAGE_ROOT, env=dict(env), capture_output=True,
                         text=True, timeout=60, check=False)
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{argv[-3:]} exited {out.returncode}: {out.stderr.strip()[-300:]}")
    return took, out.stdout


def timed_token(argv: Sequence[str], env: Mapping[str, str], cred: Credential) -> float:
    took, printed = timed(argv, env)
    if printed.strip() != cred.access_token:
        raise RuntimeError("credsync token printed something else than the fresh token")
    return took


def top_imports(argv: Sequence[str], env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The heaviest top-level imports (cumulative microseconds) of one run."""
    out = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], cwd=kit.PACKAGE_ROOT,
                         env=dict(env), capture_output=True, text=True, timeout=60, check=False)
    rows = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and len(m.group(3)) <= 1:  # top level (one space of indent at most)
            rows.append({"module": m.group(4), "cumulative_ms": int(m.group(2)) / 1000})
    rows.sort(key=lambda r: -float(r["cumulative_ms"]))
    return rows[:TOP_IMPORTS]


def measure_case(name: str, runs: int, env: Mapping[str, str], keychain: bool
                 ) -> dict[str, Any]:
    root = kit.workdir("start")
    try:
        dirs = [root / f"cfg{i}" for i in range(3)]
        cred = fresh_cred()
        for d in dirs:
            d.mkdir()
            cli_write(d, cred)
        env = {**env, "XDG_CACHE_HOME": str(root / "cache")}  # the note: not the user's own
        config = kit.write_config(root / "config.toml", dirs, root / "state", keychain=keychain,
                                  refresh={"enabled": True,
                                           "token_url": "http://127.0.0.1:9/token"})
        token_argv = kit.credsync_argv("token", "--config", str(config))
        floor_argv = [sys.executable, "-c", "pass"]
        stdlib_argv = [sys.executable, "-c", f"import {STDLIB}"]
        note = note_file(env)
        for _ in range(2):  # warm-up: bytecode caches written, files in the page cache
            timed(floor_argv, env)
            timed(token_argv, env)
        floor_s: list[float] = []
        stdlib_s: list[float] = []
        token_s: list[float] = []
        full_s: list[float] = []
        for _ in range(runs):
            floor_s.append(timed(floor_argv, env)[0])
            stdlib_s.append(timed(stdlib_argv, env)[0])
            token_s.append(timed_token(token_argv, env, cred))
            if note is not None:  # the first call after a change: the full command
                Path(note).unlink(missing_ok=True)
                full_s.append(timed_token(token_argv, env, cred))
        return {"case": name, "runs": runs, "keychain": keychain,
                "token": kit.summary_ms(token_s), "floor": kit.summary_ms(floor_s),
                "full": kit.summary_ms(full_s) if full_s else None,
                "stdlib_floor": kit.summary_ms(stdlib_s), "stdlib_modules": STDLIB,
                "ratio": round(statistics.median(token_s) / statistics.median(floor_s), 2),
                "stdlib_ratio": round(statistics.median(stdlib_s) / statistics.median(floor_s), 2),
                "top_imports": top_imports(token_argv, env)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(cfg: StartupConfig | None = None) -> kit.Result:
    cfg = cfg or StartupConfig()
    result = kit.Result(BENCH)
    cases = [measure_case("files only", cfg.runs, kit.child_env(), keychain=False)]
    if cfg.keychain_case:
        with kit.private_keyring() as keyring:
            # Written once by the agent's first round in real life: here, by hand.
            system_backend().set_password("credsync", "claude-code", "{}")
            cases.append(measure_case("with keychain", cfg.runs, kit.child_env(keyring.env),
                                      keychain=True))
    result.data["cases"] = cases
    for case in cases:
        t, f = case["token"], case["floor"]
        label = f"credsync token, {case['case']}"
        goal = case["case"] == "files only"
        result.row(label, "median (python -c pass)",
                   f"{kit.ms(t['median_ms'])} ({kit.ms(f['median_ms'])})")
        result.row(label, "ratio to python -c pass", f"{case['ratio']:.2f}x",
                   f"< {GOAL_RATIO:g}x" if goal else "", case["ratio"] < GOAL_RATIO if goal
                   else None)
        if goal:
            s = case["stdlib_floor"]
            result.row(f"python -c 'import {STDLIB}'", "median (ratio to pass)",
                       f"{kit.ms(s['median_ms'])} ({case['stdlib_ratio']:.2f}x)")
        if case["full"] is not None:
            full = case["full"]["median_ms"]
            result.row(f"{label}, first call after a change", "median (ratio to pass)",
                       f"{kit.ms(full)} ({full / f['median_ms']:.2f}x)")
        heaviest = ", ".join(f"{r['module']} {r['cumulative_ms']:.0f}"
                             for r in case["top_imports"][:3])
        result.row(label, "heaviest imports (ms)", heaviest or "-")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.bench.startup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 runs each instead of 20")
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    cfg = StartupConfig.quick() if args.quick else StartupConfig()
    if args.runs is not None:
        cfg = StartupConfig(runs=args.runs, keychain_case=cfg.keychain_case)
    result = run(cfg)
    return kit.report(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
