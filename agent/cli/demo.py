"""``credsync demo``: what credsync prevents, shown in about a minute on any machine.

Simulated Claude Code sessions in several config dirs share one login against a simulated OAuth
server on 127.0.0.1 with a token lifetime of seconds: first on their own, then with the real
agent (``credsync run``) beside them. Everything lives in a temporary directory that is removed
afterwards; the user's own config dirs, keychain and credsync state are never touched.

Registered into the main click group by ``agent.cli.main``. The world is imported only when the
command runs, so that loading the CLI stays cheap.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import click

__all__ = ["demo_cmd"]

EXIT_FAILED = 1


@click.command()
@click.option("--sessions", type=click.IntRange(1, 64), default=12, show_default=True,
              help="Simulated Claude Code sessions.")
@click.option("--dirs", type=click.IntRange(1, 16), default=4, show_default=True,
              help="Config dirs the sessions are spread over (one login copied into each).")
@click.option("--lifetimes", type=click.FloatRange(0.5, 100), default=6.0, show_default=True,
              help="How many token lifetimes each run lasts.")
@click.option("--lifetime-s", type=click.FloatRange(1.0, 60), default=3.0, show_default=True,
              help="Access token lifetime in seconds (the real one is 8 hours).")
@click.option("--old-cli", is_flag=True,
              help="Sessions behave like Claude Code 2.1.37 (no compare-and-swap save).")
def demo_cmd(sessions: int, dirs: int, lifetimes: float, lifetime_s: float,
             old_cli: bool) -> None:
    """Run simulated sessions sharing one login, without and then with credsync."""
    from agent.sim.world import SUMMARY_COLUMNS, World, WorldConfig, format_results

    base = WorldConfig(sessions=sessions, dirs=dirs, lifetimes=lifetimes,
                       lifetime_s=lifetime_s, cas=not old_cli)
    click.echo(f"{sessions} simulated sessions in {dirs} config dirs share one login; tokens "
               f"live {lifetime_s:g} s; each run lasts {lifetimes:g} lifetimes.")
    results = []
    with tempfile.TemporaryDirectory(prefix="credsync-demo-") as tmp:
        for n, agent in enumerate((False, True)):
            config = replace(base, agent=agent)
            click.echo(f"running {config.label}...")
            root = Path(tmp) / f"run{n}"
            try:
                results.append(World(config, root).run())
            except (RuntimeError, OSError) as exc:
                click.echo(f"credsync: the demo could not run: {exc}", err=True)
                sys.exit(EXIT_FAILED)
    click.echo("")
    click.echo(format_results(results, SUMMARY_COLUMNS))
    for result in results:
        for problem in result.errors:
            click.echo(f"credsync: {result.label}: {problem}", err=True)
