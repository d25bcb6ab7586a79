"""Every benchmark in one run: ``python -m agent.bench [--quick] [--json FILE] [--only a,b]``.

In the issue's order: propagation, sessions, contention, idle, start-up; then the cluster
(issue 14: propagation across three machines through Redis, the idle cost of membership). Each
compares itself against a baseline measured in the same run; this prints one table of every
figure and goal and writes the same figures, and each benchmark's raw data, to one JSON file
(default ``bench-results.json``). ``--quick`` takes a few minutes instead of about fifteen;
``--smoke`` is for the tests (a few iterations: the figures mean nothing). The exit status is 1
when any goal was missed. Linux only (gnome-keyring, /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.bench import cluster, idle, kit, propagation, startup

DEFAULT_JSON = Path("bench-results.json")
ORDER = ("propagation", "sessions", "contention", "idle", "startup", "cluster")
# The other benchmarks run through their own main(): these are their arguments per mode.
EXTERNAL_ARGS: dict[str, dict[str, list[str]]] = {
    "sessions": {"full": [], "quick": ["--lifetimes", "20", "--lifetime-s", "1.5",
                                       "--codex-lifetimes", "2.5"],
                 "smoke": ["--lifetimes", "2", "--lifetime-s", "1", "--current-only",
                           "--no-wake", "--no-codex"]},
    "contention": {"full": [], "quick": ["--rounds", "2"],
                   "smoke": ["--rounds", "1", "--processes", "4"]},
}


def _ours(name: str, mode: str) -> kit.Result:
    if name == "propagation":
        return propagation.run({"full": propagation.PropagationConfig(),
                                "quick": propagation.PropagationConfig.quick(),
                                "smoke": propagation.PropagationConfig.smoke()}[mode])
    if name == "idle":
        return idle.run({"full": idle.IdleConfig(), "quick": idle.IdleConfig.quick(),
                         "smoke": idle.IdleConfig.smoke()}[mode])
    if name == "cluster":
        return cluster.run({"full": cluster.ClusterConfig(),
                            "quick": cluster.ClusterConfig.quick(),
                            "smoke": cluster.ClusterConfig.smoke()}[mode])
    return startup.run({"full": startup.StartupConfig(), "quick": startup.StartupConfig.quick(),
                        "smoke": startup.StartupConfig.smoke()}[mode])


def _external(name: str, mode: str) -> kit.Result:
    """Run ``agent.bench.<name>.main()`` and read back the JSON it writes."""
    try:
        module = importlib.import_module(f"agent.bench.{name}")
    except ImportError as exc:
        result = kit.Result(name)
        result.row("-", "not run", f"agent.bench.{name} cannot be imported ({exc})")
        return result
    main: Callable[[Sequence[str]], int] = module.main
    with tempfile.TemporaryDirectory(prefix="credsync-bench-") as tmp:
        out = Path(tmp) / f"{name}.json"
        with contextlib.redirect_stdout(sys.stderr):  # its own table: detail, on stderr
            main([*EXTERNAL_ARGS[name][mode], "--json", str(out)])
        return _read_result(name, json.loads(out.read_text()))


def _read_result(name: str, obj: dict[str, Any]) -> kit.Result:
    result = kit.Result(name)
    for entry in obj.get("results", []):
        for row in entry.get("rows", []):
            result.rows.append(kit.Row(**row))
        result.data.update(entry.get("data", {}))
    return result


def run_all(names: Sequence[str], mode: str) -> list[kit.Result]:
    results = []
    for name in names:
        print(f"[bench] {name} ({mode}) ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            result = _external(name, mode) if name in EXTERNAL_ARGS else _ours(name, mode)
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            traceback.print_exc(file=sys.stderr)
            result = kit.Result(name)
            result.row("-", "failed", f"{type(exc).__name__}: {str(exc)[:200]}", "runs", False)
        result.data["elapsed_s"] = round(time.monotonic() - start, 1)
        print(f"[bench] {name}: {result.data['elapsed_s']} s", file=sys.stderr, flush=True)
        results.append(result)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer iterations (a few minutes)")
    mode.add_argument("--smoke", action="store_true", help="for the tests: figures meaningless")
    p.add_argument("--only", default=",".join(ORDER),
                   help=f"comma-separated subset of {', '.join(ORDER)}")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON,
                   help=f"where to write the figures (default: ./{DEFAULT_JSON})")
    args = p.parse_args(argv)
    args.names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in ORDER]
    if unknown:
        p.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    results = run_all(args.names, mode)
    rows = [row for r in results for row in r.rows]
    print(kit.render_table(rows))
    missed = [row for row in rows if row.ok is False]
    print(f"\n{len(rows)} figures, {sum(r.ok is not None for r in rows)} with a goal, "
          f"{len(missed)} missed; mode {mode}; figures in {args.json}")
    kit.write_json(args.json, results, {"mode": mode, "command": " ".join(sys.argv)})
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
