"""Propagation: from a credential written into one config dir until every other store holds it.

    python -m agent.bench.propagation [--quick] [--writes N] [--sinks 1,5,10,100,500] [--json F]

``credsync run`` runs as a real process (real inotify) with three config dirs, the real Secret
Service keychain (gnome-keyring on a private D-Bus) and 1 to 500 cache-file sinks. Each write is
the CLI's (a newer credential, temp file + rename) into one config dir, rotating the dir; the
latency runs until every other store holds it. The agent writes its stores in order (config dirs,
keychain, sinks), so the bench polls the last sink (cheap), then checks every store once; a store
found behind is polled until it catches up and the later time counts.

The floor, measured in the same run and interleaved with the agent's writes: a plain loop doing
the same atomic writes (temp + fsync + rename + dir fsync) to the other two dirs and every sink,
plus one keychain set, with no agent. Goals: p99 within 50 ms for three dirs, the keychain and
five sinks; within 1.5x the floor; under 2 ms per extra sink. One more case, without a
keychain for agent and floor alike, shows what the keychain costs each of them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bench import kit
from agent.credential import Credential, merged_document, parse_document
from agent.fsutil import atomic_write
from agent.stores.keychain import (
    OWN_ACCOUNT,
    OWN_SERVICE,
    KeychainBackend,
    own_account,
    system_backend,
)
from agent.stores.sink import SinkStore

BENCH = "propagation"
GOAL_P99_MS = 50.0  # three dirs, the keychain, five sinks
GOAL_RATIO = 1.5
GOAL_PER_SINK_MS = 2.0
GOAL_SINKS = 5
SINK_FORMATS = ("access-token", "env", "json", "claude")
FLOOR_SERVICE = "credsync-bench-floor"  # the floor's own item: the agent never reads it
CATCH_UP_DEADLINE_S = 10.0
POLL_S = 0.0002  # between looks at the last sink: short, so the poll adds little latency
# Expiries 20 h ahead: hours from any refresh deadline, inside the plausible-lifetime cap (24 h).
BASE_MS = (int(time.time()) + 20 * 3600) * 1000


@dataclass(frozen=True)
class PropagationConfig:
    sink_counts: tuple[int, ...] = (1, 5, 10, 100, 500)
    writes: int = 200
    gap_s: float = 0.03  # after each write: the agent finishes its round before the next one
    # Also without the keychain (agent and floor alike): what the keychain costs each of them.
    without_keychain: bool = True

    @classmethod
    def quick(cls) -> PropagationConfig:
        return cls(writes=40)

    @classmethod
    def smoke(cls) -> PropagationConfig:
        return cls(sink_counts=(1, 5), writes=4, gap_s=0.01, without_keychain=False)


def new_cred(serial: int) -> Credential:
    tag = secrets.token_hex(12)
    return Credential.build(f"sk-ant-oat01-bench-{serial}-{tag}", f"sk-ant-ort01-bench-{tag}",
                            BASE_MS + serial * 1000, scopes=["user:inference"],
                            subscriptionType="max")


def document(cred: Credential) -> bytes:
    return json.dumps(merged_document(None, cred)).encode()


def cli_write(config_dir: Path, cred: Credential) -> None:
    """What the CLI does: a temp file and a rename (no fsync)."""
    target = config_dir / ".credentials.json"
    tmp = config_dir / f".credentials.json.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, document(cred))
    finally:
        os.close(fd)
    os.replace(tmp, target)


class World:
    """Three config dirs and N sinks on disk; what each store holds, looked at cheaply."""

    def __init__(self, root: Path, sinks: int, keychain: bool = True) -> None:
        self.root = root
        self.keychain = keychain
        self.dirs = [root / f"cfg{i}" for i in range(3)]
        self.sinks = [SinkStore(root / "sessions" / f"s{i}" / "token",
                                SINK_FORMATS[i % len(SINK_FORMATS)]) for i in range(sinks)]
        for d in self.dirs:
            d.mkdir(parents=True)
        self.state = root / "state"

    def config(self) -> Path:
        sinks = [{"path": s.path, "format": s.format} for s in self.sinks]
        return kit.write_config(self.root / "config.toml", self.dirs, self.state,
                                keychain=self.keychain, sinks=sinks)

    @staticmethod
    def has_token(path: Path, token: bytes) -> bool:
        try:
            with open(path, "rb") as fh:
                return token in fh.read()
        except OSError:
            return False

    def file_holds(self, d: Path, cred: Credential) -> bool:
        try:
            return parse_document((d / ".credentials.json").read_bytes())[0].valid == cred
        except OSError:
            return False

    def behind(self, cred: Credential, skip: Path, keychain: KeychainBackend | None
               ) -> list[str]:
        """Every store other than ``skip`` that does not hold ``cred`` yet."""
        token = cred.access_token.encode()
        late = [str(d) for d in self.dirs if d != skip and not self.file_holds(d, cred)]
        late += [s.name for s in self.sinks if not self.has_token(s.path, token)]
        if keychain is None:
            return late
        raw = keychain.get_password(OWN_SERVICE, own_account(self.dirs))
        if raw is None or parse_document(raw.encode())[0].valid != cred:
            late.append("keychain")
        return late


def wait_propagated(world: World, cred: Credential, skip: Path,
                    keychain: KeychainBackend | None, start: float
                    ) -> tuple[float, list[str]]:
    """Seconds from ``start`` until every store holds ``cred``; and which ones lagged the last
    sink (written last by the agent), if any."""
    last = world.sinks[-1].path
    token = cred.access_token.encode()
    deadline = start + CATCH_UP_DEADLINE_S
    while not world.has_token(last, token):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the last sink never got the credential written at {skip}")
        time.sleep(POLL_S)
    done = time.perf_counter()
    lagging = world.behind(cred, skip, keychain)
    if lagging:
        # Something was written after the last sink (or failed): wait for it; that time counts.
        kit.wait_until(lambda: not world.behind(cred, skip, keychain),
                       CATCH_UP_DEADLINE_S, f"{lagging} to catch up", 0.002)
        done = time.perf_counter()
    return done - start, lagging


class Floor:
    """No agent: the same atomic writes (two dirs, every sink) and one keychain set (when the
    case has a keychain)."""

    def __init__(self, root: Path, sinks: Sequence[SinkStore],
                 keychain: KeychainBackend | None) -> None:
        self.dirs = [root / f"floor{i}" for i in range(2)]
        for d in self.dirs:
            d.mkdir(parents=True)
        self.sinks = [SinkStore(root / "floor-sessions" / s.path.parent.name / "token", s.format)
                      for s in sinks]
        for sink in self.sinks:
            sink.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keychain = keychain

    def once(self, cred: Credential) -> float:
        doc = document(cred)
        start = time.perf_counter()
        for d in self.dirs:
            atomic_write(d / ".credentials.json", doc)
        for sink in self.sinks:
            atomic_write(sink.path, sink.render(cred, None))
        if self.keychain is not None:
            self.keychain.set_password(FLOOR_SERVICE, OWN_ACCOUNT, doc.decode())
        return time.perf_counter() - start


def measure_case(sinks: int, cfg: PropagationConfig, keyring: kit.PrivateKeyring | None,
                 keychain: KeychainBackend | None, serial: Callable[[], int]) -> dict[str, Any]:
    root = kit.workdir(f"prop{sinks}")
    try:
        world = World(root, sinks, keychain=keychain is not None)
        first = new_cred(serial())
        for d in world.dirs:
            cli_write(d, first)
        env = kit.child_env(keyring.env if keyring is not None else None)
        agent = kit.AgentRun(world.config(), world.state, env)
        try:
            agent.wait_started()
            kit.wait_until(lambda: not world.behind(first, world.dirs[0], keychain),
                           kit.START_DEADLINE_S, "the first sync", 0.01)
            floor = Floor(root, world.sinks, keychain)
            floor.once(first)  # warm-up: directories exist, the keychain item too
            agent_s: list[float] = []
            floor_s: list[float] = []
            lagged = 0
            for k in range(cfg.writes):
                cred = new_cred(serial())
                target = world.dirs[k % len(world.dirs)]
                cli_write(target, cred)
                start = time.perf_counter()
                took, lagging = wait_propagated(world, cred, target, keychain, start)
                agent_s.append(took)
                lagged += bool(lagging)
                time.sleep(cfg.gap_s)
                floor_s.append(floor.once(cred))
                time.sleep(cfg.gap_s / 3)
            stats = agent.stats()
        finally:
            agent.stop()
        return {"sinks": sinks, "writes": cfg.writes, "agent": kit.summary_ms(agent_s),
                "floor": kit.summary_ms(floor_s), "lagged_last_sink": lagged,
                "keychain": keychain is not None,
                "agent_rounds": stats.get("rounds"), "agent_writes": stats.get("writes")}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def per_sink_ms(cases: Sequence[dict[str, Any]], side: str) -> float | None:
    """Least-squares slope of the median latency over the sink count (ms per extra sink)."""
    points = [(float(c["sinks"]), float(c[side]["median_ms"])) for c in cases]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def run(cfg: PropagationConfig | None = None) -> kit.Result:
    cfg = cfg or PropagationConfig()
    result = kit.Result(BENCH)
    counter = iter(range(1, 1 << 30))
    cases = []
    for sinks in cfg.sink_counts:
        try:
            # A keychain of its own per case: a daemon that fails takes one case down, not all.
            with kit.private_keyring() as keyring:
                backend = system_backend()
                try:
                    cases.append(measure_case(sinks, cfg, keyring, backend,
                                              lambda: next(counter)))
                finally:
                    close = getattr(backend, "close", None)
                    if callable(close):
                        close()
        except Exception as exc:  # the other cases' figures still count
            result.row(f"3 dirs+keychain+{sinks} sinks", "failed",
                       f"{type(exc).__name__}: {str(exc)[:160]}", "runs", False)
    bare = []
    if cfg.without_keychain:
        try:
            bare.append(measure_case(GOAL_SINKS, cfg, None, None, lambda: next(counter)))
        except Exception as exc:
            result.row(f"3 dirs+{GOAL_SINKS} sinks, no keychain", "failed",
                       f"{type(exc).__name__}: {str(exc)[:160]}", "runs", False)
    result.data["cases"] = cases + bare
    for case in cases:
        label = f"3 dirs+keychain+{case['sinks']} sinks"
        a, f = case["agent"], case["floor"]
        result.row(label, "agent median / p99",
                   f"{kit.ms(a['median_ms'])} / {kit.ms(a['p99_ms'])}",
                   f"p99 <= {GOAL_P99_MS:g} ms" if case["sinks"] == GOAL_SINKS else "",
                   a["p99_ms"] <= GOAL_P99_MS if case["sinks"] == GOAL_SINKS else None)
        result.row(label, "floor median / p99",
                   f"{kit.ms(f['median_ms'])} / {kit.ms(f['p99_ms'])}")
        ratio_med, ratio_p99 = a["median_ms"] / f["median_ms"], a["p99_ms"] / f["p99_ms"]
        case["ratio"] = {"median": round(ratio_med, 2), "p99": round(ratio_p99, 2)}
        result.row(label, "ratio to floor median / p99", f"{ratio_med:.2f}x / {ratio_p99:.2f}x",
                   f"<= {GOAL_RATIO:g}x", max(ratio_med, ratio_p99) <= GOAL_RATIO)
    for case in bare:  # no goal of its own: it shows where the difference comes from
        label = f"3 dirs+{case['sinks']} sinks, no keychain"
        a, f = case["agent"], case["floor"]
        result.row(label, "agent / floor median", f"{kit.ms(a['median_ms'])} / "
                   f"{kit.ms(f['median_ms'])} ({a['median_ms'] / f['median_ms']:.2f}x)")
    slope, floor_slope = per_sink_ms(cases, "agent"), per_sink_ms(cases, "floor")
    result.data["per_sink_ms"] = {"agent": slope, "floor": floor_slope}
    if slope is not None and floor_slope is not None:
        result.row(f"1..{max(cfg.sink_counts)} sinks", "per extra sink (agent / floor)",
                   f"{slope:.3f} ms / {floor_slope:.3f} ms", f"< {GOAL_PER_SINK_MS:g} ms",
                   slope < GOAL_PER_SINK_MS)
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent.bench.propagation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="40 writes per case instead of 200")
    p.add_argument("--writes", type=int, default=None)
    p.add_argument("--sinks", default=None, help="comma-separated sink counts")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> PropagationConfig:
    cfg = PropagationConfig.quick() if args.quick else PropagationConfig()
    if args.writes is not None:
        cfg = PropagationConfig(cfg.sink_counts, args.writes, cfg.gap_s)
    if args.sinks:
        counts = tuple(int(x) for x in args.sinks.split(",") if x.strip())
        cfg = PropagationConfig(counts, cfg.writes, cfg.gap_s)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(config_from(args))
    return kit.report(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
