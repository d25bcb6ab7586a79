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
from agent.filelock import InstanceLock
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
        rows.append(StoreStatus(
            name=store.name, kind=store.kind, location=store.location, state=state_,
            fingerprint=cred.fingerprint if cred and cred.access_token else None,
            expires_at=iso(cred.expires_at) if cred and cred.expires_at_ms > 1 else None,
            detail=detail))
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


def render_text(status: Status) -> str:
    shown = status.agent_state + (f" (pid {status.pid})" if status.running else "")
    lines = [f"config:  {status.config_file}", f"agent:   {shown}"]
    best = status.best
    login = (f"{status.login_state}, {best.fingerprint}, expires {iso(best.expires_at)}"
             if best else status.login_state)
    lines.append(f"login:   {login}")
    for key, value in status.extra.items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, "", []))
            lines.append(f"{key + ':':<8} {shown}")
    lines.append("stores:")
    width = max((len(s.name) for s in status.stores), default=0)
    for s in status.stores:
        parts = [f"  {s.name:<{width}}  {s.state:<10}", s.fingerprint or "-",
                 s.expires_at or "-"]
        if s.state == "error" or s.state in ("cleared", "logged-out", "missing"):
            parts.append(s.detail)
        lines.append("  ".join(p for p in parts if p))
    return "\n".join(lines)
