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
      "mcp": [{"key": str, "server": str, "in_step": bool,
               "dirs": [{"config_dir": str, "state": "valid" | "expired" | "cleared"
                                  | "signing-in" | "missing" | "unreadable",
                         "fingerprint": str | null, "expires_at": number | null,
                         "refreshable": bool}]}],   # Claude Code's MCP connector tokens,
                                                    # read only (agent.mcp)
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
from agent.mcp import McpKey, entries_of, mcp_keys
from agent.reconcile import Reconciler
from agent.stores.claude_file import ClaudeFileStore


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
    # Why credsync cannot write it, with the fix (macOS: an item another program made), or "".
    blocker: str = ""


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
    now: float = 0.0  # when it was collected: the text view says "in 5 h", "3 min ago"
    mcp: list[McpKey] = field(default_factory=list)

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
            "mcp": [key.to_json() for key in self.mcp],
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
            detail=detail, role=store.role.value, blocker=blocker or ""))
    pid = InstanceLock(ledger.path).holder()
    status = Status(config_file, pid is not None, pid, str(ledger.path), verdict.state.value,
                    best, rows)
    status.agent_state = agent_state(pid, saved, now)
    status.now = now
    status.mcp = collect_mcp([s for s in writer.stores if isinstance(s, ClaudeFileStore)], now)
    if verdict.reason:
        status.extra["login"] = {"reason": verdict.reason}
    return status


def collect_mcp(files: list[ClaudeFileStore], now: float) -> list[McpKey]:
    """Each config dir's MCP connector entries, read only: credsync never writes them."""
    per_dir = []
    for store in files:
        reading, document = store.read_document()
        if reading.state is ReadState.MISSING:
            document = {}  # a logout removes the whole file, MCP entries too: nothing there
        per_dir.append((str(store.config_dir), entries_of(document, now)))
    return mcp_keys(per_dir)


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
    """The view for people (``agent.cli.statustext``); ``--json`` is the one for scripts."""
    from agent.cli.statustext import render

    return render(status)
