"""The Codex side: its login (from the same status computation ``credsync status`` uses),
each home's store, the environment's ``CODEX_HOME`` against ``[codex] homes``, and Codex's
token endpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.cli.status import Status
from agent.cli.statustext import clean, codex_sections, from_iso, when
from agent.doctor.model import Check, fail, ok, warn

__all__ = ["CODEX_LOGIN", "codex_environment_check", "codex_login_check", "is_codex"]

CODEX_LOGIN = "codex login"
_FIX = {
    "none": f"log in: `{CODEX_LOGIN}`",
    "logged-out": f"you logged out on purpose; to log in again: `{CODEX_LOGIN}`",
    "relogin-required": f"the server refused the refresh: `{CODEX_LOGIN}`",
    "expired": "`credsync token --codex` (or start the agent: `credsync run`)",
    "unreadable": "see the Codex store lines: the store that holds the login cannot be read",
}


def is_codex(kind: str) -> bool:
    return kind.startswith("codex")


def codex_login_check(status: Status) -> list[Check]:
    """A line per Codex account (one, unless the homes hold logins of several)."""
    accounts = codex_sections(status)
    checks = [_login_check(codex, status.now, len(accounts) > 1) for codex in accounts]
    if any(codex.get("resort") for codex in accounts):
        checks.append(warn("codex accounts", "a Codex home has changed account since the "
                           "agent started; its homes are sorted by account at start",
                           "restart the agent (`credsync run`, or the login item)"))
    return checks


def _login_check(codex: Mapping[str, Any], now: float, named: bool) -> Check:
    homes = [str(h) for h in codex.get("homes") or []]
    name = f"codex login ({', '.join(clean(h) for h in homes)})" if named else "codex login"
    state = str(codex.get("login", ""))
    if state == "ok":
        expires = when(from_iso(codex.get("expires_at")), now)
        return ok(name, f"ok, {clean(codex.get('fingerprint'))}, expires {expires}")
    reason = clean(codex.get("reason", ""))
    fix = _FIX.get(state, f"`{CODEX_LOGIN}`")
    if named and homes:
        fix = fix.replace(f"`{CODEX_LOGIN}`", f"`CODEX_HOME={clean(homes[0])} {CODEX_LOGIN}`")
    return fail(name, state + (f": {reason}" if reason else ""), fix)


def codex_store_fix(state: str, location: str) -> str:
    home = Path(location).parent if location.endswith("auth.json") else Path(location)
    if state == "logged-out":
        return f"to use it again: `CODEX_HOME={clean(home)} {CODEX_LOGIN}`"
    return f"move {clean(location)} away and log in again: `CODEX_HOME={clean(home)} " \
           f"{CODEX_LOGIN}`"


def codex_environment_check(env: Mapping[str, str], homes: list[Path],
                            config_file: Path) -> list[Check]:
    """Sessions started from this shell use ``$CODEX_HOME`` (else ~/.codex): kept?"""
    home = env.get("CODEX_HOME")
    if not home:
        return []
    current = Path(home).expanduser().absolute()
    kept = {Path(h).expanduser().absolute() for h in homes}
    if current in kept:
        return [ok("codex environment", f"CODEX_HOME={clean(home)}: kept by credsync")]
    listed = ", ".join(f'"{h}"' for h in [*homes, current])
    return [fail("codex environment", f"CODEX_HOME={clean(home)}: Codex sessions here use it, "
                 "and credsync does not keep it",
                 f"set [codex] homes = [{listed}] in {config_file}")]


def renamed(check: Check, name: str, fix_setting: str) -> Check:
    """The token endpoint check, for Codex's endpoint ([codex] token_url)."""
    fix = check.fix.replace("[refresh] token_url", fix_setting)
    return dataclasses.replace(check, name=name, fix=fix)


def extra_of(status: Status) -> dict[str, Any]:
    value = status.extra.get("codex")
    return value if isinstance(value, dict) else {}
