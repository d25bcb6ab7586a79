"""Idle cost: what a running agent costs while nothing happens.

    python -m agent.bench.idle [--quick] [--seconds S] [--json FILE]

``credsync run`` as a real process with a default-ish configuration (three config dirs, the real
Secret Service keychain on a private D-Bus, five sinks, refresh and desktop notices on, a login
far from its refresh deadline) is left alone for a minute (``--quick``: 20 s) after its start-up
settles. From /proc (Linux only): CPU seconds (utime + stime, and the finer per-thread schedstat),
wake-ups (voluntary context switches summed over every thread), resident memory (VmRSS) and
threads. Figures are scaled to one minute. The baseline, in the same run: a bare ``python`` that
only sleeps (its resident memory is the interpreter's floor). Goals: under 0.05 CPU seconds per
idle minute, under 60 MB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bench import kit
from agent.bench.propagation import World, cli_write, new_cred
from agent.stores.keychain import system_backend

BENCH = "idle"
GOAL_CPU_S_PER_MIN = 0.05
GOAL_RSS_MB = 60.0


@dataclass(frozen=True)
class IdleConfig:
    seconds: float = 60.0
    sinks: int = 5
    settle_s: float = 3.0  # after the first sync: imports done, keychain worker up, watches set

    @classmethod
    def quick(cls) -> IdleConfig:
        return cls(seconds=20.0)

    @classmethod
    def smoke(cls) -> IdleConfig:
        return cls(seconds=1.0, settle_s=0.2)


def idle_figures(before: kit.ProcSample, after: kit.ProcSample, seconds: float
                 ) -> dict[str, Any]:
    """What a process cost between two samples ``seconds`` apart, scaled to one minute."""
    per_min = 60.0 / seconds
    return {"seconds": round(seconds, 3),
            "cpu_s_per_min": round((after.cpu_s - before.cpu_s) * per_min, 4),
            "cpu_s_per_min_schedstat": round((after.cpu_ns - before.cpu_ns) / 1e9 * per_min, 4),
            "wakeups_per_min": round((after.wakeups - before.wakeups) * per_min, 1),
            "rss_mb": round(after.rss_kb / 1024, 1), "threads": after.threads}


def measure_idle(pids: Sequence[int], seconds: float) -> list[dict[str, Any]]:
    """Each process's ``idle_figures`` over one same window of ``seconds`` (measured: the
    window is the time between the two rounds of samples)."""
    before = [kit.proc_sample(pid) for pid in pids]
    start = time.monotonic()
    time.sleep(seconds)
    after = [kit.proc_sample(pid) for pid in pids]
    took = time.monotonic() - start
    return [idle_figures(b, a, took) for b, a in zip(before, after, strict=True)]


def measure_agent(cfg: IdleConfig) -> dict[str, Any]:
    with kit.private_keyring() as keyring:
        root = kit.workdir("idle")
        try:
            world = World(root, cfg.sinks)
            cred = new_cred(1)
            for d in world.dirs:
                cli_write(d, cred)
            sinks = [{"path": s.path, "format": s.format} for s in world.sinks]
            # A token URL nobody listens on: an idle agent must not be refreshing anyway.
            config = kit.write_config(root / "config.toml", world.dirs, world.state,
                                      sinks=sinks, desktop_notices=True,
                                      refresh={"enabled": True,
                                               "token_url": "http://127.0.0.1:9/token"})
            agent = kit.AgentRun(config, world.state, kit.child_env(keyring.env))
            try:
                agent.wait_started()
                keychain = system_backend()
                kit.wait_until(lambda: not world.behind(cred, world.dirs[0], keychain),
                               kit.START_DEADLINE_S, "the first sync", 0.05)
                time.sleep(cfg.settle_s)
                rounds_before = int(agent.stats().get("rounds", 0))
                out = measure_idle([agent.pid], cfg.seconds)[0]
                out["rounds"] = int(agent.stats().get("rounds", 0)) - rounds_before
            finally:
                agent.stop()
            return out
        finally:
            shutil.rmtree(root, ignore_errors=True)


def measure_baseline(seconds: float, settle_s: float) -> dict[str, Any]:
    """A bare interpreter that sleeps: the floor for resident memory and wake-ups."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            env=kit.child_env())
    try:
        time.sleep(settle_s)
        return measure_idle([proc.pid], seconds)[0]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def run(cfg: IdleConfig | None = None) -> kit.Result:
    cfg = cfg or IdleConfig()
    result = kit.Result(BENCH)
    agent = measure_agent(cfg)
    base = measure_baseline(min(cfg.seconds, 5.0), settle_s=min(cfg.settle_s, 1.0))
    result.data.update(agent=agent, baseline=base, config={"sinks": cfg.sinks, "dirs": 3,
                                                           "keychain": True})
    case = f"3 dirs+keychain+{cfg.sinks} sinks, {cfg.seconds:g} s"
    cpu = agent["cpu_s_per_min"]
    result.row(case, "CPU s per idle minute (ticks / schedstat)",
               f"{cpu:.3f} s / {agent['cpu_s_per_min_schedstat']:.3f} s",
               f"< {GOAL_CPU_S_PER_MIN:g} s", max(cpu, agent["cpu_s_per_min_schedstat"])
               < GOAL_CPU_S_PER_MIN)
    result.row(case, "wake-ups per idle minute (all threads)",
               f"{agent['wakeups_per_min']:.0f} (bare python {base['wakeups_per_min']:.0f})")
    ratio = agent["rss_mb"] / base["rss_mb"] if base["rss_mb"] else float("nan")
    result.row(case, "resident memory (ratio to bare python)",
               f"{agent['rss_mb']:.1f} MB ({ratio:.1f}x of {base['rss_mb']:.1f} MB)",
               f"< {GOAL_RSS_MB:g} MB", agent["rss_mb"] < GOAL_RSS_MB)
    result.row(case, "threads / rounds while idle", f"{agent['threads']} / {agent['rounds']}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.bench.idle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 idle seconds instead of 60")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    cfg = IdleConfig.quick() if args.quick else IdleConfig()
    if args.seconds is not None:
        cfg = IdleConfig(seconds=args.seconds, sinks=cfg.sinks, settle_s=cfg.settle_s)
    result = run(cfg)
    return kit.report(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
