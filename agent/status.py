"""``credsync status``: what every store holds, computed afresh (the agent need not run).

JSON schema (``credsync status --json``), stable for scripts:
    {
      "config_file": str,
      "agent": {"running": bool, "pid": int | null, "state_dir": str},
      "login": {"state": "ok" | "expired" | "none" | <auth state>, "fingerprint": str | null,
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.credential import Credential, Reading, ReadState
from agent.filelock import InstanceLock
from agent.reconcile import StoreMemory, choose_winner
from agent.state import Journal, StateDir
from agent.stores.base import Store


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

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "config_file": self.config_file,
            "agent": {"running": self.running, "pid": self.pid, "state_dir": self.state_dir},
            "login": {"state": self.login_state,
                      "fingerprint": best.fingerprint if best else None,
                      "expires_at": iso(best.expires_at) if best else None},
            "stores": [vars(s) for s in self.stores],
            **({"extra": self.extra} if self.extra else {}),
        }


def store_state(reading: Reading, best: Credential | None, mem: StoreMemory | None) -> str:
    state = reading.state
    if state is ReadState.VALID:
        cred = reading.credential
        assert cred is not None
        same = (cred.access_token == best.access_token if not cred.refresh_token
                else cred.same_tokens(best)) if best else False
        return "in-sync" if same else "stale"
    if state is ReadState.MISSING and mem is not None and mem.logged_out_since is not None:
        return "logged-out"
    return {ReadState.CLEARED: "cleared", ReadState.LOGGED_OUT: "logged-out",
            ReadState.MISSING: "missing"}.get(state, "error")


def collect(stores: Sequence[Store], state: StateDir, config_file: str, now: float) -> Status:
    readings = {s.name: s.read() for s in stores}
    saved = state.load_json("agent.json")
    memory = {str(k): StoreMemory.from_json(v) for k, v in saved.get("stores", {}).items()
              if isinstance(v, dict)} if isinstance(saved.get("stores"), dict) else {}
    rejected = {str(x) for x in saved.get("rejected", []) if isinstance(x, str)}
    candidates = [r.valid for s in stores if s.is_source and (r := readings[s.name]).valid]
    last_good = state.load_last_good()
    spent = Journal(state.file("journal")).spent()
    best = choose_winner([*candidates, *([last_good] if last_good else [])], rejected, spent)
    # The agent's last failed write to a store (disk full, permission denied), until it succeeds.
    saved_errors = saved.get("write_errors")
    errors: dict[str, Any] = saved_errors if isinstance(saved_errors, dict) else {}
    rows = []
    for store in stores:
        reading = readings[store.name]
        cred = reading.credential
        state_, detail = store_state(reading, best, memory.get(store.name)), reading.detail
        if state_ != "in-sync" and isinstance(errors.get(store.name), str):
            state_, detail = "error", f"write failed: {errors[store.name]}"
        rows.append(StoreStatus(
            name=store.name, kind=store.kind, location=store.location, state=state_,
            fingerprint=cred.fingerprint if cred and cred.access_token else None,
            expires_at=iso(cred.expires_at) if cred and cred.expires_at_ms > 1 else None,
            detail=detail))
    pid = InstanceLock(state.path).holder()
    login_state = "none" if best is None else ("ok" if best.expires_at > now else "expired")
    return Status(config_file, pid is not None, pid, str(state.path), login_state, best, rows)


def render_text(status: Status) -> str:
    lines = [f"config:  {status.config_file}",
             "agent:   " + (f"running (pid {status.pid})" if status.running else "not running")]
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
