"""``credsync cluster init|invite|join|status|leave``: one login shared by several machines.

Printing and exit codes only; the work is ``agent.cluster.admin.ClusterAdmin``'s. No token is
ever printed: status shows fingerprints, member ids and times.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from agent.cli.main import config_option, errors_to_exit, load


def _admin(config_path: Path | None) -> Any:
    settings, _ = load(config_path)
    from agent.cluster.admin import ClusterAdmin

    return ClusterAdmin(settings)


@click.group("cluster")
def cluster_cmd() -> None:
    """Share this login with other machines through Redis."""


@cluster_cmd.command("init")
@click.option("--redis", "url", required=True, metavar="URL",
              help="rediss://host:port/db (redis:// only to loopback, or unix:///path).")
@config_option
def init_cmd(url: str, config_path: Path | None) -> None:
    """Create the cluster for this login (first machine)."""
    with errors_to_exit():
        admin = _admin(config_path)
        try:
            member = admin.init(url)
        finally:
            admin.close()
    click.echo(f"cluster {member.login_id} created on {member.redis_url}; this machine is "
               f"member {member.member_id} ({member.name}); key kept in the {member.key_store}")
    click.echo("next: run credsync cluster invite here, then credsync cluster join CODE "
               "--redis URL on the other machine")


@cluster_cmd.command("invite")
@config_option
def invite_cmd(config_path: Path | None) -> None:
    """Print a one-time join code (valid 10 minutes, single use) as the last line."""
    with errors_to_exit():
        admin = _admin(config_path)
        try:
            code, member = admin.invite()
        finally:
            admin.close()
    click.echo(f"join code for cluster {member.login_id}, valid 10 minutes, once; on the other "
               f"machine run: credsync cluster join CODE --redis {member.redis_url}")
    click.echo(code)


@cluster_cmd.command("join")
@click.argument("code")
@click.option("--redis", "url", required=True, metavar="URL",
              help="The same Redis as the cluster's (see credsync cluster status there).")
@config_option
def join_cmd(code: str, url: str, config_path: Path | None) -> None:
    """Join a cluster with a code from credsync cluster invite."""
    with errors_to_exit():
        admin = _admin(config_path)
        try:
            member = admin.join(code, url)
        finally:
            admin.close()
    click.echo(f"joined cluster {member.login_id} as member {member.member_id} "
               f"({member.name}); key kept in the {member.key_store}")


@cluster_cmd.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_option
def status_cmd(as_json: bool, config_path: Path | None) -> None:
    """This machine's membership, the cluster's state and its members."""
    with errors_to_exit():
        admin = _admin(config_path)
        try:
            report = admin.report()
        finally:
            admin.close()
    click.echo(json.dumps(report, indent=2) if as_json else render(report))


@cluster_cmd.command("leave")
@config_option
def leave_cmd(config_path: Path | None) -> None:
    """Leave the cluster: this machine's key and records go; the others keep the login."""
    with errors_to_exit():
        admin = _admin(config_path)
        try:
            member, problem = admin.leave()
        finally:
            admin.close()
    if member is None:
        click.echo("this login is in no cluster; nothing to do")
        return
    click.echo(f"left cluster {member.login_id} (member {member.member_id})")
    if problem:
        click.echo(f"credsync: Redis could not be told ({problem}); the other members will "
                   "see this member's last heartbeat age", err=True)


def _printable(text: object) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render(report: dict[str, Any]) -> str:
    if not report.get("member"):
        return "cluster: none (single machine)"
    lines = [f"cluster: {report['login_id']} on {_printable(report['redis_url'])}",
             f"member:  {report['member_id']} ({_printable(report['name'])}), key in the "
             f"{report['key_store']}, key id {report['kid']}"]
    if not report.get("reachable"):
        lines.append(f"redis:   unreachable: {_printable(report.get('error', ''))}")
        return "\n".join(lines)
    state = report.get("state")
    if state is None:
        lines.append("state:   none published yet")
    elif state.get("problem"):
        lines.append(f"state:   v{state['version']} does not open: {_printable(state['problem'])}")
    else:
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state["issued_redis_ms"] / 1000))
        lines.append(f"state:   v{state['version']} gen {state['gen']} {state['fingerprint']} "
                     f"by {state['by']} at {issued}")
    lines.append("members:")
    for m in report.get("members", []):
        prop = m.get("propagation_ms")
        shown = f", last propagation {prop:.1f} ms" if isinstance(prop, (int, float)) else ""
        lines.append(f"  {m['member_id']}  {_printable(m['name']):<20} seen {_ago(m['age_s'])}, "
                     f"clock offset {m['offset_s']:+.3f} s, gen {m['gen']}{shown}")
    return "\n".join(lines)
