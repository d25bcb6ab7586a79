"""``credsync status``: what every store holds, computed afresh (the agent need not run).

JSON schema (``credsync status --json``), stable for scripts:
    {
      "config_file": str,
      "agent": {"running": bool, "pid": int | null, "state_dir": str,
                "state": "running" | "stopped" | "not responding" | "not running"},
      "login": {"state": "ok" | "expired" | "none" | "logged-out" | "relogin-required"
                         | "unreadable", "fingerprint": str | null,
                "expires_at": ISO-8601 | null, "lifetime_s": number | null,
                "lifetime_source": "last refresh" | "nominal"},
      "stores": [{"name": str, "kind": "claude-file" | "keychain" | "sink", "location": str,
                  "role": "holder" (Claude Code's own store) | "copy" (credsync's copy)
                          | "output" (a sink sessions read),
                  "state": "in-sync" | "stale" | "cleared" | "logged-out" | "missing" | "error",
                  "fingerprint": str | null, "expires_at": ISO-8601 | null, "detail": str}],
      "extra": {...}   # sections added by other parts (refresh, alert, login item)
    }
No token ever appears in it: fingerprints only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from agent.credential import Credential, Reading, ReadState
from agent.locks.filelock import InstanceLock
from agent.reconcile import Reconciler


def iso(ts: float | None) -> str | None:
    if ts is None or ts <= 0:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StoreStatus:
    name: str
    kind: str
    location: str
    state: str
    fingerprint: str | None
    expires_at: str | None
    detail: str = ""
    role: str = "copy"


ROLE_WORDS = {"holder": "Claude Code's own", "copy": "credsync's copy", "output": "sink"}


@dataclass
class Status:
    config_file: str
    running: bool
    pid: int | None
    state_dir: str
    login_state: str
    best: Credential | None
    stores: list[StoreStatus]
    extra: dict[str, Any] = field(default_factory=dict)
    agent_state: str = "not running"  # running | stopped | not responding | not running

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "config_file": self.config_file,
            "agent": {"running": self.running, "pid": self.pid, "state_dir": self.state_dir,
                      "state": self.agent_state},
            "login": {"state": self.login_state,
                      "fingerprint": best.fingerprint if best else None,
                      "expires_at": iso(best.expires_at) if best else None},
            "stores": [vars(s) for s in self.stores],
            **({"extra": self.extra} if self.extra else {}),
        }


def store_state(reading: Reading, best: Credential | None, logged_out: bool) -> str:
    state = reading.state
    if state is ReadState.VALID:
        cred = reading.credential
        assert cred is not None
        same = (cred.access_token == best.access_token if not cred.refresh_token
                else cred.same_tokens(best)) if best else False
        return "in-sync" if same else "stale"
    if logged_out:
        return "logged-out"
    return {ReadState.CLEARED: "cleared", ReadState.LOGGED_OUT: "logged-out",
            ReadState.MISSING: "missing"}.get(state, "error")


def collect(writer: Reconciler, config_file: str, now: float) -> Status:
    """Every store read afresh and judged by the winner rule, as the agent would judge it."""
    ledger = writer.ledger
    readings = writer.read_all()
    verdict = writer.verdict(readings)
    best = verdict.winner
    saved = ledger.load_agent()
    # The agent's last failed write to a store (disk full, permission denied), until it succeeds.
    saved_errors = saved.get("write_errors")
    errors: dict[str, Any] = saved_errors if isinstance(saved_errors, dict) else {}
    rows = []
    for store in writer.stores:
        reading = readings[store.name]
        cred = reading.credential
        state_ = store_state(reading, best, store.name in verdict.logged_out)
        detail = reading.detail
        if state_ != "in-sync" and isinstance(errors.get(store.name), str):
            state_, detail = "error", f"write failed: {errors[store.name]}"
        blocker = store.write_blocker()
        if blocker is not None and blocker not in detail:
            detail = f"{detail}; {blocker}" if detail else blocker
        rows.append(StoreStatus(
            name=store.name, kind=store.kind, location=store.location, state=state_,
            fingerprint=cred.fingerprint if cred and cred.access_token else None,
            expires_at=iso(cred.expires_at) if cred and cred.expires_at_ms > 1 else None,
            detail=detail, role=store.role.value))
    pid = InstanceLock(ledger.path).holder()
    status = Status(config_file, pid is not None, pid, str(ledger.path), verdict.state.value,
                    best, rows)
    status.agent_state = agent_state(pid, saved, now)
    if verdict.reason:
        status.extra["login"] = {"reason": verdict.reason}
    return status


# The agent saves its view every round, and runs a round at least every AUDIT_S: a view much
# older than that belongs to an agent that is stopped (SIGSTOP, a debugger) or stuck.
STALE_AFTER_S = 150.0


def agent_state(pid: int | None, saved: dict[str, Any], now: float) -> str:
    if pid is None:
        return "not running"
    if pid > 0 and _process_stopped(pid):
        return "stopped"
    updated = saved.get("updated_at")
    if isinstance(updated, (int, float)) and now - float(updated) > STALE_AFTER_S:
        return "not responding"
    return "running"


def _process_stopped(pid: int) -> bool:
    """Linux: the process is stopped (state T or t in /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return False
    return bool(fields) and fields[0] in ("T", "t")


# --- the text view -------------------------------------------------------------------------
#
# For people: plain words, no Python reprs. Every string that comes from outside (a config-dir
# path, a store's detail, a server's error) is escaped, so that a newline or another control
# character in a directory name cannot forge a row.

_LOGIN_NEXT_STEP = {
    "none": "no valid login in any store: log in with `claude` (or `claude auth login`)",
    "expired": "the login has expired: run `credsync refresh`, or start the agent",
    "relogin-required": "the refresh was refused: log in again with `claude auth login`",
    "logged-out": "logged out on purpose: log in with `claude` (or `claude auth login`)",
    "unreadable": "the login's store cannot be read now: see the store rows below",
}
_NO_SESSION_HINT = ("no desktop session: run inside a desktop login, or set "
                    "[claude] keychain = false")
_SWITCHES = frozenset({"enabled", "active", "desktop"})  # on/off rather than yes/no


def clean(text: object) -> str:
    """``text`` on one line: control and other unprintable characters escaped (\\n, \\x1b)."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in value)


def duration(seconds: float) -> str:
    """28800 -> "8 h", 5400 -> "90 min", 45 -> "45 s", 259200 -> "3 d"."""
    for unit, size, above in (("d", 86400, 2 * 86400), ("h", 3600, 2 * 3600),
                              ("min", 60, 2 * 60)):
        if abs(seconds) >= above:
            return f"{round(seconds / size, 1):g} {unit}"
    return f"{round(seconds, 1):g} s"


def plain(key: str, value: object) -> str:
    """One value of an extra section in words: on/off, yes/no, durations, escaped text."""
    if isinstance(value, bool):
        return ("on" if value else "off") if key in _SWITCHES else ("yes" if value else "no")
    if isinstance(value, (int, float)) and key.endswith("_s"):
        return duration(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(clean(v) for v in value)
    return clean(value)


def _label(key: str) -> str:
    return clean(key[:-2] if key.endswith("_s") else key)


def _section(value: dict[str, Any]) -> str:
    return ", ".join(f"{_label(str(k))}={plain(str(k), v)}" for k, v in value.items()
                     if v not in (None, "", []))


def _login_line(status: Status) -> str:
    best = status.best
    state = clean(status.login_state)
    login = f"{state}, {best.fingerprint}, expires {iso(best.expires_at)}" if best else state
    step = _LOGIN_NEXT_STEP.get(status.login_state)
    return f"{login} ({step})" if step else login


def _agent_line(status: Status) -> str:
    if not status.running:
        return "not running"
    pid = f"pid {status.pid}" if status.pid and status.pid > 0 else \
        "pid unknown: agent.pid is unreadable"
    return f"{status.agent_state} ({pid})"


def _store_detail(s: StoreStatus) -> str:
    detail = clean(s.detail)
    if s.kind == "keychain" and "DBUS_SESSION_BUS_ADDRESS" in s.detail:
        detail += f" ({_NO_SESSION_HINT})"
    return detail


def render_text(status: Status) -> str:
    lines = [f"config:  {clean(status.config_file)}", f"agent:   {_agent_line(status)}",
             f"login:   {_login_line(status)}"]
    for key, value in status.extra.items():
        if isinstance(value, dict):
            lines.append(f"{clean(key) + ':':<8} {_section(value)}")
    lines.append("stores:")
    names = [clean(s.name) for s in status.stores]
    width = max((len(n) for n in names), default=0)
    for name, s in zip(names, status.stores, strict=True):
        role = ROLE_WORDS.get(s.role, s.role)
        parts = [f"  {name:<{width}}  {clean(s.state):<10}", clean(s.fingerprint or "-"),
                 clean(s.expires_at or "-"), f"[{role}]"]
        if s.state in ("error", "cleared", "logged-out", "missing") or \
                (s.detail and s.role == "holder" and s.state != "in-sync"):
            parts.append(_store_detail(s))
        lines.append("  ".join(p for p in parts if p))
    return "\n".join(lines)
