"""Claude Code's MCP connector tokens (``mcpOAuth``): read-only, per entry, per config dir.

credsync never writes, copies or restores these (``shared/notes/mcp.md``: copying an entry to
a second dir turns two refresh chains into one shared chain behind two locks, which races). It
only says what each dir holds, for ``credsync status`` and ``credsync doctor``:

    valid       an access token, not expired (or no expiry given)
    expired     an access token past its ``expiresAt`` (the CLI refreshes it on next use)
    cleared     ``accessToken: ""``, ``expiresAt: 0``, no refresh token: a loser's clear;
                the CLI asks for a new sign-in (``/mcp``)
    signing-in  ``accessToken: ""`` without ``expiresAt``: a stub written during a sign-in
    missing     the key is in another config dir but not this one (a deliberate clear, or
                never signed in here)
    unreadable  the entry is not an object, or the file cannot be read

A key is "in step" when every config dir holds it ``valid``. Tokens never leave this module:
entries carry fingerprints only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.credential import fingerprint_of, ms_or_none

__all__ = ["McpEntry", "McpKey", "classify", "entries_of", "mcp_keys"]

VALID, EXPIRED, CLEARED, SIGNING_IN, MISSING, UNREADABLE = (
    "valid", "expired", "cleared", "signing-in", "missing", "unreadable")
# What a person should do about each state that is not fine.
NEXT_STEP = {
    CLEARED: "sign in to it again: /mcp in a Claude Code session of that dir",
    MISSING: "sign in there if you use it there: /mcp in a Claude Code session of that dir",
    UNREADABLE: "sign in to it again: /mcp in a Claude Code session of that dir",
}


@dataclass(frozen=True)
class McpEntry:
    """One config dir's entry for one key: its state, never its tokens."""

    state: str
    server: str = ""
    fingerprint: str | None = None
    expires_at: float | None = None  # seconds since the epoch
    refreshable: bool = False


@dataclass(frozen=True)
class McpKey:
    """One ``mcpOAuth`` key across the config dirs (in their configured order)."""

    key: str
    server: str
    entries: tuple[tuple[str, McpEntry], ...]  # (config dir, entry)

    @property
    def in_step(self) -> bool:
        return all(e.state == VALID for _, e in self.entries)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "server": self.server, "in_step": self.in_step,
                "dirs": [{"config_dir": d, "state": e.state, "fingerprint": e.fingerprint,
                          "expires_at": e.expires_at, "refreshable": e.refreshable}
                         for d, e in self.entries]}


def classify(entry: Any, now: float) -> McpEntry:
    """The state of one ``mcpOAuth`` entry (by the CLI's writers, mcp.md's table)."""
    if not isinstance(entry, Mapping):
        return McpEntry(UNREADABLE)
    server = entry.get("serverName")
    name = server if isinstance(server, str) else ""
    access = entry.get("accessToken")
    expires_ms = ms_or_none(entry.get("expiresAt"))
    refresh = entry.get("refreshToken")
    refreshable = isinstance(refresh, str) and bool(refresh)
    if not isinstance(access, str):
        return McpEntry(UNREADABLE, name)
    if not access:
        if "expiresAt" not in entry:
            return McpEntry(SIGNING_IN, name)
        return McpEntry(CLEARED, name)
    expires = expires_ms / 1000 if expires_ms is not None and expires_ms > 0 else None
    state = EXPIRED if expires is not None and expires <= now else VALID
    return McpEntry(state, name, fingerprint_of(access), expires, refreshable)


def entries_of(document: Mapping[str, Any] | None, now: float) -> dict[str, McpEntry] | None:
    """Every entry of one credentials document; None when it has no readable ``mcpOAuth``."""
    if document is None:
        return None
    section = document.get("mcpOAuth")
    if not isinstance(section, Mapping):
        return {}
    return {str(key): classify(value, now) for key, value in section.items()}


def mcp_keys(per_dir: Sequence[tuple[str, Mapping[str, McpEntry] | None]]) -> list[McpKey]:
    """Every key any dir holds, with each dir's entry (``missing`` where it has none).

    A dir whose document could not be read (None) says ``unreadable`` rather than ``missing``:
    nothing is known of it."""
    keys: dict[str, None] = {}
    for _, entries in per_dir:
        keys.update(dict.fromkeys(sorted(entries or {})))
    out = []
    for key in keys:
        row = []
        server = ""
        for directory, entries in per_dir:
            entry = McpEntry(UNREADABLE) if entries is None else \
                entries.get(key, McpEntry(MISSING))
            server = server or entry.server
            row.append((directory, entry))
        out.append(McpKey(key, server or key, tuple(row)))
    return out
