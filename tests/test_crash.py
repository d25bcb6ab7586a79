"""SIGKILL the agent at random moments of refresh and fan-out cycles; nothing may be lost.

Real processes against the simulated OAuth server, with a two-second token lifetime so that the
agent refreshes on its own about every second. A cycle starts the agent, lets one of four things
happen and kills it at a random moment:

- ``agent``: the agent's own refresh; the kill lands a random time after its request reached the
  server (before the answer when the server is told to be slow, else during persist and fan-out);
- ``command``: ``credsync refresh`` in another process at the same time; that process is killed
  too in half of these cycles;
- ``fanout``: a CLI session (the simulated CLI, under the CLI's locks) rotates the token in one
  dir; the agent is killed while it copies the new login to the other stores;
- ``random``: at any moment in the first second of its life (start-up, first rounds, a refresh
  from its very beginning).

After each kill, before anything restarts: every store parses. After the restart: every store
holds the freshest credential that was persisted, and either its refresh token is unspent on the
server (the newest of its family: nothing was lost), or credsync says ``relogin-required`` and
never sends that token again; no lock directory or credsync lock is left held. Across the run the
server sees no invalid grant: no token was ever sent twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.credential import Credential, fingerprint_of
from agent.ledger import Journal, Ledger, token_hash
from agent.locks import owner as lockowner
from agent.locks.filelock import FileLock
from agent.sim.server import OAuthServer
from agent.sim.session import SimSession
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.sink import SinkStore
from tests.agentproc import REPO, AgentProcess, wait_for, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CYCLES = int(os.environ.get("CREDSYNC_CRASH_CYCLES", "200"))
WORLDS = 2  # two independent worlds at once: the cycles mostly wait on process start-up
LIFETIME_S = 2.0
SETTLE_S = 15.0
LOCK_NAMES = (".storage-write.lock", ".oauth_refresh.lock")


@dataclass
class Tally:
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    orphaned_locks: int = 0  # lock dirs a killed process left behind (freed on restart)
    unmarked_locks: int = 0  # killed between mkdir and marking: left to the stale rule
    temp_files: set[Path] = field(default_factory=set)  # left by a killed atomic write
    command_kills: int = 0
    settle_s: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.kinds += other.kinds
        self.outcomes += other.outcomes
        self.orphaned_locks += other.orphaned_locks
        self.unmarked_locks += other.unmarked_locks
        self.temp_files |= other.temp_files
        self.command_kills += other.command_kills
        self.settle_s += other.settle_s


def atomic_cli_write(d: Path, oauth: dict[str, object]) -> None:
    tmp = d / ".credentials.json.login"
    tmp.write_text(json.dumps({"claudeAiOauth": oauth}))
    os.replace(tmp, d / ".credentials.json")


class CrashWorld:
    def __init__(self, root: Path, seed: int) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.rng = random.Random(seed)
        self.guarded = seed % 2 == 0  # half the worlds with the wake guard, half without
        self.server = OAuthServer(access_lifetime_s=LIFETIME_S).start()
        self.requests = threading.Event()
        self.server.on_token_request = self.requests.set
        self.dirs = [root / "cfg0", root / "cfg1"]
        self.state = root / "state"
        self.ledger = Ledger(self.state, self.dirs)
        self.sinks = [SinkStore(root / "sinks" / "token", "access-token"),
                      SinkStore(root / "sinks" / "claude" / ".credentials.json", "claude")]
        self.files = [ClaudeFileStore(d) for d in self.dirs]
        self.config = write_config(
            root / "config.toml", self.dirs, self.state, keychain=False,
            log_file=root / "log" / "credsync.log",
            sinks=[{"path": s.path, "format": s.format} for s in self.sinks],
            refresh={"token_url": self.server.url, "jitter": 0, "at_fraction": 0.5,
                     "client_window_s": 0, "margin_s": 0, "nominal_lifetime_s": LIFETIME_S,
                     "timeout_s": 5, "hold_cli_locks": self.guarded})
        # With the wake guard the agent holds the CLI's refresh locks: the session's refresh
        # is refused at once (the kill then lands while the agent fans out its own rounds);
        # without it, the session refreshes and the agent fans the session's login out.
        self.session = SimSession(self.dirs[0], self.server.url, window_s=1e9,
                                  lock_wait_s=0.5 if self.guarded else 20)
        self.agent: AgentProcess | None = None
        self.tally = Tally()
        self.login()

    # ----- the world ---------------------------------------------------------------------
    def login(self) -> None:
        """The user logs in (again) in one CLI session: a new token family in cfg0."""
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        atomic_cli_write(self.dirs[0], self.server.issue_login())

    def start(self) -> AgentProcess:
        t0 = time.time()
        agent = AgentProcess(self.config)
        self.agent = agent

        def up() -> bool:
            if agent.proc.poll() is not None:
                raise AssertionError(f"agent exited:\n{agent.output()}")
            try:
                pid = int((self.ledger.path / "agent.pid").read_text())
            except (OSError, ValueError):
                return False
            return pid == agent.proc.pid and agent.stats(self.state).get("updated_at", 0) >= t0
        wait_for(up, 20, "the agent's first round")
        return agent

    def kill(self, proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def spent(self) -> Counter[str]:
        """How many requests presented each refresh token fingerprint and were redeemed."""
        return Counter(r.fingerprint for r in self.server.log() if r.outcome in ("rotated", "lost"))

    def log_tail(self) -> str:
        path = self.root / "log" / "credsync.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def presented(self, fp: str) -> int:
        return sum(1 for r in self.server.log() if r.fingerprint == fp)

    # ----- the checks --------------------------------------------------------------------
    def check_after_kill(self) -> Credential:
        """Every store parses; return the freshest credential persisted anywhere."""
        creds = []
        for store in self.files:
            reading = store.read()
            assert reading.valid is not None, f"{store.name}: {reading.state} {reading.detail}"
            creds.append(reading.valid)
        for sink in self.sinks:
            reading = sink.read()
            assert reading.state.value in ("valid", "missing"), f"{sink.name}: {reading.detail}"
        last_good = self.ledger.load_last_good()
        if self.ledger.file("last-good.json").exists():
            assert last_good is not None, "last-good.json does not parse"
            creds.append(last_good)
        for name in ("agent.json", "login.json", "memory.json"):
            path = self.ledger.file(name)
            if path.exists():
                assert isinstance(json.loads(path.read_text()), dict), name
        self.tally.temp_files.update(self.temp_files())
        for lock in self.lock_dirs():
            # Left by a killed process (nothing else runs now): recognisably an orphan, freed
            # on restart; or, killed between mkdir and marking, an unmarked one that waits for
            # its stale time like a CLI's (that wait is test_faults'; here it is skipped).
            owner = os.getxattr(lock, lockowner.ATTR) if _has_attr(lock) else None
            if owner is None:
                self.tally.unmarked_locks += 1
                os.utime(lock, (time.time() - 61, time.time() - 61))
                continue
            assert lockowner.is_orphaned(owner), f"{lock} held by a live process {owner!r}"
            self.tally.orphaned_locks += 1
        return max(creds, key=lambda c: c.expires_at_ms)

    def temp_files(self) -> list[Path]:
        found: list[Path] = []
        for d in [*self.dirs, self.state, self.ledger.path, *(s.path.parent for s in self.sinks)]:
            found += [p for p in d.glob(".*.tmp")]
        return found

    def lock_dirs(self) -> list[Path]:
        found = [d / name for d in self.dirs for name in LOCK_NAMES if (d / name).exists()]
        return found + [d.with_name(d.name + ".lock") for d in self.dirs
                        if d.with_name(d.name + ".lock").exists()]

    def settled(self) -> tuple[Credential, str] | None:
        """The stores in step and the login accounted for; None while not (yet) so."""
        spent = self.spent()  # read first: a token unspent now was the family's newest then
        creds = [s.read().valid for s in self.files]
        last_good = self.ledger.load_last_good()
        first = creds[0]
        if first is None or not all(first.same_tokens(c) for c in [*creds[1:], last_good]):
            return None
        if not all(first.access_token in s.path.read_text() for s in self.sinks
                   if s.path.exists()) or not all(s.path.exists() for s in self.sinks):
            return None
        fp = fingerprint_of(first.refresh_token)
        if spent[fp] == 0 and not Journal(self.state / "journal").was_sent(first.refresh_token):
            return first, "kept"
        if token_hash(first.refresh_token) in self.ledger.journal.read().rejected:
            # refused or lost: the winner rule says relogin-required for it, everywhere
            return first, "relogin-lost" if spent[fp] else "relogin-unsent"
        return None

    def locks_free(self) -> bool:
        # The running agent holds the CLI's refresh locks (its wake guard); any other lock
        # left behind, or one marked by a dead process, is a leak.
        if any(not lockowner.held_by_live_credsync(p) for p in self.lock_dirs()):
            return False
        return not FileLock(self.state / "refresh.lock").is_held_elsewhere()

    def settle(self, persisted: Credential, rotations_at_kill: int) -> None:
        start = time.monotonic()
        found: list[tuple[Credential, str]] = []

        def done() -> bool:
            result = self.settled()
            if result is not None:
                found.append(result)
            return result is not None
        wait_for(done, SETTLE_S, "the stores in step after the restart", interval_s=0.01)
        cred, outcome = found[-1]
        self.tally.settle_s.append(time.monotonic() - start)
        # What was persisted before the kill is what the stores end with (or something newer
        # that was issued since the restart): never anything older.
        assert cred.expires_at_ms >= persisted.expires_at_ms
        if self.server.stats().rotations == rotations_at_kill:
            assert cred.same_tokens(persisted), "the stores lost the persisted credential"
        wait_for(self.locks_free, 5, "no lock left held", interval_s=0.005)
        if outcome != "kept":
            self.relogin_required(cred, outcome)
        self.tally.outcomes[outcome] += 1

    def relogin_required(self, cred: Credential, outcome: str) -> None:
        fp = fingerprint_of(cred.refresh_token)
        journal = Journal(self.state / "journal")
        assert journal.was_sent(cred.refresh_token), \
            "relogin-required, but the token was never sent"
        # The user-facing command says so too, and sends nothing.
        before = self.presented(fp)
        out = subprocess.run([sys.executable, "-m", "agent.cli", "refresh", "--config",
                              str(self.config)], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 3 and out.stdout.startswith("relogin-required"), out
        assert self.presented(fp) == before <= 1, (
            "a spent refresh token was sent again: "
            f"{[r for r in self.server.log() if r.fingerprint == fp]}; outcome {outcome}; "
            f"tally {self.tally}; agent log:\n{self.log_tail()}")
        self.login()
        fresh = self.files[0].read().valid
        assert fresh is not None
        wait_for(lambda: all(s.read().valid == fresh for s in self.files[1:])
                 and self.ledger.load_last_good() == fresh, SETTLE_S,
                 "the new login everywhere")

    # ----- one cycle ---------------------------------------------------------------------
    def cycle(self) -> None:
        agent = self.agent or self.start()
        kind = self.rng.choices(["agent", "random", "command", "fanout"], [7, 4, 5, 4])[0]
        self.tally.kinds[kind] += 1
        if kind != "fanout" and self.rng.random() < 0.2:
            self.server.inject_delay(self.rng.uniform(0.02, 0.15))
        if kind == "random":
            # Anywhere in the agent's life: start-up, rounds, a refresh from its very start.
            time.sleep(self.rng.uniform(0, 1.0))
            self.kill(agent.proc)
        elif kind == "agent":
            self.requests.clear()
            wait_for(self.requests.is_set, 10, "the agent's own refresh", interval_s=0.002)
            time.sleep(self.rng.uniform(0, 0.2))  # the random moment of the kill
            self.kill(agent.proc)
        elif kind == "command":
            self.command_cycle(agent)
        else:
            self.session.step(time.time())
            time.sleep(self.rng.uniform(0, 0.05))
            self.kill(agent.proc)
        agent.kill()
        self.server.clear_faults()
        rotations = self.server.stats().rotations
        persisted = self.check_after_kill()
        self.agent = None
        self.start()
        self.settle(persisted, rotations)

    def command_cycle(self, agent: AgentProcess) -> None:
        self.requests.clear()
        cmd = subprocess.Popen([sys.executable, "-m", "agent.cli", "refresh", "--config",
                                str(self.config)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        kill_cmd = self.rng.random() < 0.5
        try:
            wait_for(lambda: self.requests.is_set() or cmd.poll() is not None, 20,
                     "a token request", interval_s=0.002)
            time.sleep(self.rng.uniform(0, 0.2))
            self.kill(agent.proc)
            if kill_cmd:
                self.kill(cmd)
                self.tally.command_kills += 1
            _, err = cmd.communicate(timeout=60)
            assert kill_cmd or cmd.returncode in (0, 1, 3), err
        finally:
            self.kill(cmd)

    def close(self) -> None:
        if self.agent is not None:
            self.agent.kill()
        self.server.stop()


def _has_attr(path: Path) -> bool:
    try:
        return lockowner.ATTR in os.listxattr(path)
    except OSError:
        return False


def run_world(root: Path, seed: int, cycles: int, results: dict[int, object]) -> None:
    try:
        world = CrashWorld(root, seed)
    except BaseException as exc:
        results[seed] = exc
        return
    try:
        for _ in range(cycles):
            world.cycle()
        stats = world.server.stats()
        assert stats.invalid_grants == 0 and stats.revoked_families == 0, stats
        results[seed] = (world.tally, stats.rotations)
    except BaseException as exc:  # handed to the main thread, which fails the test
        results[seed] = exc
        if world.agent is not None:
            print(world.agent.output()[-3000:], file=sys.stderr)
    finally:
        world.close()


def test_sigkill_at_random_moments_loses_no_login(tmp_path: Path) -> None:
    results: dict[int, object] = {}
    per_world = -(-CYCLES // WORLDS)
    threads = [threading.Thread(target=run_world, args=(tmp_path / f"w{i}", i, per_world,
                                                        results), name=f"crash-world-{i}")
               for i in range(WORLDS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a crash world hung"
    total, rotations = Tally(), 0
    for value in results.values():
        if isinstance(value, BaseException):
            raise value
        assert isinstance(value, tuple)
        total.add(value[0])
        rotations += value[1]
    assert sum(total.kinds.values()) >= CYCLES
    print(f"\ncrash: {sum(total.kinds.values())} kills ({dict(total.kinds)}), {rotations} "
          f"rotations, outcomes {dict(total.outcomes)}, {total.command_kills} refresh commands "
          f"killed, {total.orphaned_locks} orphaned locks freed ({total.unmarked_locks} "
          f"unmarked), {len(total.temp_files)} temp "
          f"files left, settle max {max(total.settle_s):.2f} s")
    # The run exercised what it claims to: rotations that were kept and ones that were lost.
    assert total.outcomes["kept"] > CYCLES // 2
