"""The login and every store, from the same status computation ``credsync status`` uses (two
answers to one question would be a bug); the MCP connector tokens, read only."""

from __future__ import annotations

from agent.cli.status import Status, StoreStatus
from agent.cli.statustext import clean, from_iso, when
from agent.doctor.codex import codex_store_fix, is_codex
from agent.doctor.model import Check, fail, ok, warn
from agent.mcp import CLEARED, MISSING, UNREADABLE, McpKey

__all__ = ["login_checks", "mcp_checks", "store_checks"]

LOGIN_IN = "claude auth login` (or `claude`, then /login)"
_LOGIN_FIX = {
    "none": f"log in: `{LOGIN_IN}",
    "logged-out": f"you logged out on purpose; to log in again: `{LOGIN_IN}",
    "relogin-required": f"the server refused the refresh: `{LOGIN_IN}",
    "expired": "`credsync refresh` (or start the agent: `credsync run`)",
    "unreadable": "see the store lines below: the store that holds the login cannot be read",
}


def login_checks(status: Status) -> list[Check]:
    """The login's verdict, and whether the config dirs hold one login or several."""
    best = status.best
    state = status.login_state
    reason = clean((status.extra.get("login") or {}).get("reason", ""))
    if state == "off":
        return [ok("login", "off: [claude] config_dirs = [] (Claude Code's login is not kept)")]
    if state == "ok" and best is not None:
        first = ok("login", f"ok, {best.fingerprint}, expires {when(best.expires_at, status.now)}")
    else:
        first = fail("login", f"{state}" + (f": {reason}" if reason else ""),
                     _LOGIN_FIX.get(state, f"`{LOGIN_IN}"))
    return [first, _one_login(status)]


def _one_login(status: Status) -> Check:
    holders = [s for s in status.stores if s.role == "holder" and not is_codex(s.kind)]
    prints = {s.fingerprint for s in holders if s.state in ("in-sync", "stale") and s.fingerprint}
    if len(prints) <= 1:
        return ok("one login", f"one login at most across {len(holders)} config dir"
                  + ("s" if len(holders) != 1 else ""))
    stale = [clean(s.name) for s in holders if s.state == "stale"]
    return warn("one login", f"{len(prints)} different logins across the config dirs "
                f"(behind: {', '.join(stale)})",
                "start the agent (`credsync run`) to put the freshest everywhere; if they are "
                "different accounts on purpose, give each its own config file and credsync")


def store_checks(status: Status) -> list[Check]:
    running = status.running and status.agent_state == "running"
    # A keychain that cannot be read is the keychain check's line (with its backend).
    return [_store(s, status, running) for s in status.stores
            if not (s.kind == "keychain" and s.state == "error" and not s.blocker)]


def _name(s: StoreStatus) -> str:
    if s.kind == "claude-file":
        return f"login in {clean(s.name.removeprefix('file:'))}"
    if is_codex(s.kind):
        return f"Codex login in {clean(s.name.removeprefix('codex:'))}"
    return "keychain copy" if s.name == "keychain" else clean(s.name)


def _store(s: StoreStatus, status: Status, running: bool) -> Check:
    name = _name(s)
    detail = clean(s.detail)
    if s.blocker:
        return fail(name, f"credsync cannot write it: {clean(s.blocker)}", _blocker_fix(s.blocker))
    if s.state == "in-sync":
        expires = when(from_iso(s.expires_at), status.now) if s.expires_at else "-"
        return ok(name, f"in step ({s.fingerprint}, expires {expires})")
    if s.state == "error":
        return fail(name, detail or "cannot be read", _error_fix(s))
    if is_codex(s.kind) and s.state in ("error", "logged-out"):
        level = fail if s.state == "error" else warn
        return level(name, detail or s.state, codex_store_fix(s.state, s.location))
    if s.state == "logged-out":
        return warn(name, "logged out on purpose (credsync leaves it so)",
                    f"to use it again: `CLAUDE_CONFIG_DIR={clean(s.location)} claude`, then "
                    "/login" if s.kind == "claude-file" else f"`{LOGIN_IN}")
    if status.best is None:
        return ok(name, f"{s.state}: nothing to copy there (see the login line)")
    fix = "nothing: the agent copies the login there within a second" if running else \
        "start the agent (`credsync run`, or `credsync install`): it copies the login there"
    return warn(name, f"{s.state}: does not hold the current login ({detail or 'behind'})", fix)


def _blocker_fix(blocker: str) -> str:
    _, sep, fix = blocker.partition("Fix, one of: ")
    return clean(fix) if sep else clean(blocker)


def _error_fix(s: StoreStatus) -> str:
    detail = s.detail.lower()
    if s.kind == "keychain":
        if "locked" in detail:
            return ("unlock the keychain (log in to the desktop session, or open Passwords and "
                    "Keys), or set [claude] keychain = false")
        if "dbus_session_bus_address" in detail or "secretservice" in detail:
            return ("run the agent inside a desktop login (a Secret Service on the session "
                    "bus), or set [claude] keychain = false")
        return "set [claude] keychain = false if this machine has no keychain"
    if "permission" in detail:
        return f"chmod u+rw {clean(s.location)}"
    if "write failed" in detail:
        return "free space or fix permissions there; the agent retries every round"
    return f"move {clean(s.location)} away and log in again (`{LOGIN_IN})"


def mcp_checks(keys: list[McpKey]) -> list[Check]:
    """One line per connector: in step, or which dir needs what. Never a fix that copies."""
    return [_mcp(key) for key in keys]


def _mcp(key: McpKey) -> Check:
    name = f"mcp {clean(key.server)}"
    states = "; ".join(f"{clean(d)}: {e.state}" for d, e in key.entries)
    bad = [(d, e) for d, e in key.entries if e.state in (CLEARED, UNREADABLE)]
    if bad:
        dirs = ", ".join(clean(d) for d, _ in bad)
        return warn(name, states, f"sign in to it again with /mcp in a Claude Code session "
                    f"of {dirs}; credsync never copies MCP tokens between dirs")
    if key.in_step:
        return ok(name, f"in step in every config dir ({states})")
    note = " (credsync never copies MCP tokens: sign in there if you use it)" \
        if any(e.state == MISSING for _, e in key.entries) else ""
    return ok(name, states + note)
