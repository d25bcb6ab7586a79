"""What the benchmarks share: statistics, a private keychain, the agent as a process, the table.

Benchmarks are not tests: they print figures and compare each against a baseline measured in the
same run (these machines are shared and noisy), reporting a ratio as well as a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from agent.ledger import scope_dir
from agent.sim.bus import BUS_CONFIG, name_has_owner

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding ``agent``
START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 10.0


# --- figures -------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was actually observed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """median, p99, min, max in milliseconds, and the count."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0, "median_ms": math.nan, "p99_ms": math.nan, "min_ms": math.nan,
                "max_ms": math.nan}
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 3),
            "p99_ms": round(percentile(ms, 99), 3), "min_ms": round(min(ms), 3),
            "max_ms": round(max(ms), 3)}


@dataclass
class Row:
    """One line of the printed table (and of the JSON ``rows``)."""

    bench: str
    case: str
    figure: str
    value: str
    goal: str = ""
    ok: bool | None = None  # None: a figure without a goal

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("ok" if self.ok else "MISSED")


@dataclass
class Result:
    """A benchmark's outcome: table rows plus every raw figure (for the JSON file)."""

    bench: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def row(self, case: str, figure: str, value: str, goal: str = "",
            ok: bool | None = None) -> None:
        self.rows.append(Row(self.bench, case, figure, value, goal, ok))

    @property
    def missed(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]

    def to_json(self) -> dict[str, Any]:
        return {"bench": self.bench, "rows": [asdict(r) for r in self.rows], "data": self.data}


def render_table(rows: Sequence[Row]) -> str:
    head = ("bench", "case", "figure", "value", "goal", "")
    cells = [head, *((r.bench, r.case, r.figure, r.value, r.goal, r.verdict) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, results: Sequence[Result], extra: Mapping[str, Any] | None = None
               ) -> None:
    obj = {"machine": machine(), **(extra or {}), "results": [r.to_json() for r in results]}
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def report(result: Result, json_path: Path | None) -> int:
    """What every benchmark's command ends with: the table, the JSON file if asked for, and
    exit 1 when a goal was missed."""
    print(render_table(result.rows))
    if json_path is not None:
        write_json(json_path, [result])
    return 1 if result.missed else 0


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"python": sys.version.split()[0], "platform": sys.platform, "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in load], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def ms(value: float) -> str:
    return f"{value:.1f} ms"


# --- processes -----------------------------------------------------------------------------

def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for credsync processes: bytecode caching on, as in an installed package
    (a shell with PYTHONDONTWRITEBYTECODE would otherwise recompile every module each start)."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPATH", str(PACKAGE_ROOT))
    return env


def credsync_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


def wait_until(cond: Callable[[], bool], deadline_s: float, what: str,
               interval_s: float = 0.005) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(interval_s)


def toml_value(value: Any) -> str:
    return json.dumps(str(value) if isinstance(value, Path) else value)


def write_config(path: Path, config_dirs: Sequence[Path], state_dir: Path, *,
                 keychain: bool = True, sinks: Sequence[Mapping[str, Any]] = (),
                 refresh: Mapping[str, Any] | None = None, log_file: Path | None = None,
                 desktop_notices: bool = False) -> Path:
    lines = ["[agent]", f"state_dir = {toml_value(state_dir)}",
             f"log_file = {toml_value(log_file or '')}", "", "[claude]",
             f"config_dirs = [{', '.join(toml_value(d) for d in config_dirs)}]",
             f"keychain = {'true' if keychain else 'false'}", "", "[refresh]",
             *(f"{k} = {toml_value(v)}" for k, v in (refresh or {"enabled": False}).items()),
             "", "[notify]", f"desktop = {'true' if desktop_notices else 'false'}"]
    for sink in sinks:
        lines += ["", "[[sinks]]", *(f"{k} = {toml_value(v)}" for k, v in sink.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentRun:
    """``credsync run`` as a real process; ``stop()`` sends SIGTERM and waits (bounded)."""

    def __init__(self, config: Path, state_dir: Path, env: Mapping[str, str]) -> None:
        self.state_dir = state_dir
        self.log = config.with_suffix(".log")
        self._log_fh: IO[bytes] = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(credsync_argv("run", "--config", str(config)),
                                     cwd=PACKAGE_ROOT, env=dict(env), stdout=self._log_fh,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = json.loads((scope_dir(self.state_dir) / "agent.json").read_text())
            return obj
        except (OSError, ValueError):
            return {}

    def wait_started(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the agent exited early:\n{self.output()}")
            return int(self.stats().get("rounds", 0)) >= 1
        wait_until(up, START_DEADLINE_S, "the agent's first round")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_DEADLINE_S)
        finally:
            self._log_fh.close()


# --- a private keychain: gnome-keyring on its own D-Bus session bus ------------------------

SECRETS = "org.freedesktop.secrets"
SCRUBBED = ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY", "GNOME_KEYRING_CONTROL",
            "SSH_AUTH_SOCK")


class PrivateKeyring:
    """A bus that activates nothing, with gnome-keyring unlocked on it; ``env`` for children.

    The same recipe as ``tests/realkeyring.py`` (see notes/platform.md); kept here so that the
    benchmarks need nothing from the test tree.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        for sub in ("home", "data", "run"):
            (root / sub).mkdir(mode=0o700)
        base = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        self.env = {**base, "HOME": str(root / "home"), "XDG_DATA_HOME": str(root / "data"),
                    "XDG_RUNTIME_DIR": str(root / "run"),
                    "XDG_CONFIG_HOME": str(root / "home" / ".config"),
                    "XDG_CACHE_HOME": str(root / "home" / ".cache")}

    def start(self) -> None:
        missing = [t for t in ("dbus-daemon", "dbus-send", "gnome-keyring-daemon")
                   if shutil.which(t) is None]
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: apt-get install dbus-daemon "
                               "dbus-bin gnome-keyring")
        conf = self.root / "bus.conf"
        conf.write_text(BUS_CONFIG.format(socket=self.root / "run" / "bus"))
        bus = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork",
                                "--print-address=1"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=self.env)
        self.procs.append(bus)
        assert bus.stdout is not None
        ready, _, _ = select.select([bus.stdout], [], [], START_DEADLINE_S)
        address = bus.stdout.readline().decode().strip() if ready else ""
        if not address:
            raise RuntimeError("dbus-daemon gave no address")
        self.env["DBUS_SESSION_BUS_ADDRESS"] = address
        daemon = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=self.env)
        self.procs.append(daemon)
        assert daemon.stdin is not None
        daemon.stdin.write(b"credsync-bench")
        daemon.stdin.close()
        wait_until(self._up, START_DEADLINE_S, "gnome-keyring on the private bus", 0.02)

    def _up(self) -> bool:
        return name_has_owner(self.env, SECRETS)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()


@contextlib.contextmanager
def private_keyring() -> Iterator[PrivateKeyring]:
    """gnome-keyring on a private bus; os.environ points at that bus meanwhile (keyring reads
    DBUS_SESSION_BUS_ADDRESS whenever it connects)."""
    root = Path(tempfile.mkdtemp(prefix="credsync-bk-"))  # short: a socket path is < 108 bytes
    keyring = PrivateKeyring(root)
    saved = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    try:
        keyring.start()
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = keyring.env["DBUS_SESSION_BUS_ADDRESS"]
        yield keyring
    finally:
        if saved is None:
            os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = saved
        keyring.close()
        shutil.rmtree(root, ignore_errors=True)


# --- /proc -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcSample:
    """CPU seconds, voluntary context switches (all threads), resident memory, threads."""

    cpu_s: float  # utime + stime, in clock ticks (10 ms on most Linux systems)
    cpu_ns: int  # on-CPU time of every live thread (schedstat): finer than the ticks
    wakeups: int
    rss_kb: int
    threads: int


def proc_sample(pid: int) -> ProcSample:
    """Linux only: /proc/<pid>/stat (utime+stime) and every thread's status."""
    tick = os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    wakeups = cpu_ns = 0
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    for task in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            cpu_ns += int((task / "schedstat").read_text().split()[0])
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    wakeups += int(line.split()[1])
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return ProcSample(cpu_s, cpu_ns, wakeups, rss_kb, len(tasks))


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"credsync-{prefix}-"))
