"""``credsync status``'s view for people: aligned columns, plain words, relative times, and a
``next step:`` line for every state that is not fine. ``--json`` stays the format for scripts.

The view is a list of sections (``SECTIONS``); each gives its lines and its next steps, so a
new part of the status (cluster rows, say) is one more ``TextSection`` appended there, without
touching the others.

Every string that comes from outside (a config-dir path, a store's detail, a server's error) is
escaped with ``clean``, so that a newline or another control character in a directory name
cannot forge a row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.cli.status import ROLE_WORDS, Status, StoreStatus
from agent.mcp import NEXT_STEP as MCP_NEXT_STEP

__all__ = ["SECTIONS", "TextSection", "clean", "duration", "render", "span", "when"]

LABEL_WIDTH = 11


def clean(text: object) -> str:
    """``text`` on one line: control and other unprintable characters escaped (\\n, \\x1b)."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in value)


def duration(seconds: float) -> str:
    """28800 -> "8 h", 5400 -> "90 min", 45 -> "45 s", 259200 -> "3 d" (a configured length)."""
    for unit, size, above in (("d", 86400, 2 * 86400), ("h", 3600, 2 * 3600),
                              ("min", 60, 2 * 60)):
        if abs(seconds) >= above:
            return f"{round(seconds / size, 1):g} {unit}"
    return f"{round(seconds, 1):g} s"


def span(seconds: float) -> str:
    """A distance in time the way people say it: "45 s", "12 min", "5 h 12 min", "3 d 4 h"."""
    whole = int(abs(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(whole // 3600, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def when(ts: float | None, now: float) -> str:
    """"in 5 h 12 min", "3 min ago", "now"; "-" for no time."""
    if ts is None or ts <= 0:
        return "-"
    delta = ts - now
    if abs(delta) < 1:
        return "now"
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


def from_iso(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


def aligned(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Rows of cells in columns (each as wide as its widest cell), trailing space trimmed."""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))] \
        if rows else []
    return [(indent + "  ".join(c.ljust(widths[i]) for i, c in enumerate(r))).rstrip()
            for r in rows]


@dataclass(frozen=True)
class TextSection:
    """One part of the view: its lines (empty for none) and its next steps."""

    lines: Callable[[Status], list[str]]
    steps: Callable[[Status], list[str]] = lambda _status: []


# --- the summary: config, agent, login, refresh, login item, alert ----------------------------

_LOGIN_NEXT_STEP = {
    "none": "no valid login in any store: log in with `claude` (or `claude auth login`)",
    "expired": "the login has expired: run `credsync refresh`, or start the agent",
    "relogin-required": "the refresh was refused: log in again with `claude auth login`",
    "logged-out": "logged out on purpose: log in with `claude` (or `claude auth login`)",
    "unreadable": "the login's store cannot be read now: see the store rows above",
}
_NO_SESSION_HINT = ("no desktop session: run inside a desktop login, or set "
                    "[claude] keychain = false")


def _pid(status: Status) -> str:
    return f"pid {status.pid}" if status.pid and status.pid > 0 else \
        "pid unknown: agent.pid is unreadable"


def _agent(status: Status) -> str:
    return f"{status.agent_state} ({_pid(status)})" if status.running else "not running"


def _login(status: Status) -> str:
    best = status.best
    state = clean(status.login_state)
    if best is None:
        return state
    return f"{state}, {best.fingerprint}, expires {when(best.expires_at, status.now)}"


def _refresh(value: dict[str, Any], now: float) -> str:
    words = ["on" if value.get("enabled") else "off"]
    if value.get("state"):
        reason = f" ({clean(value['reason'])})" if value.get("reason") else ""
        words.append(f"last try {clean(value['state'])}{reason}")
    last = from_iso(value.get("last_refresh_at"))
    words.append(f"last {when(last, now)}" if last else "never refreshed by credsync")
    nxt = from_iso(value.get("next_refresh_at"))
    if nxt is not None:
        words.append(f"next {when(nxt, now)}")
    lifetime = value.get("lifetime_s")
    if isinstance(lifetime, (int, float)):
        source = f" ({clean(value['lifetime_source'])})" if value.get("lifetime_source") else ""
        words.append(f"lifetime {duration(lifetime)}{source}")
    return ", ".join(words)


def _login_item(value: dict[str, Any]) -> str:
    if not value.get("installed"):
        detail = clean(value.get("detail") or "")
        return "not installed" + (f" ({detail})" if detail not in ("", "not installed") else "")
    words = ["installed"]
    enabled = value.get("enabled")
    if enabled is not None:
        words.append("enabled" if enabled else "disabled")
    active = value.get("active")
    if active is not None:
        words.append("running" if active else "not running")
    where = f": {clean(value['path'])}" if value.get("path") else ""
    return ", ".join(words) + where


def _alert(value: dict[str, Any], now: float) -> str:
    since = when(from_iso(value.get("since")), now)
    dirs = ", ".join(clean(d) for d in value.get("config_dirs") or [])
    return f"{clean(value.get('title', value.get('event', '')))} (since {since}" + \
        (f"; {dirs})" if dirs else ")")


def _dict(status: Status, key: str) -> dict[str, Any] | None:
    value = status.extra.get(key)
    return value if isinstance(value, dict) else None


def summary_lines(status: Status) -> list[str]:
    rows = [("config", clean(status.config_file)), ("agent", _agent(status)),
            ("login", _login(status))]
    reason = (_dict(status, "login") or {}).get("reason")
    off = status.login_state == "off"  # [claude] config_dirs = []: nothing of Claude's kept
    if reason and status.login_state != "ok" and not off:
        rows.append(("why", clean(reason)))
    refresh = _dict(status, "refresh")
    if refresh is not None and not off:
        rows.append(("refresh", _refresh(refresh, status.now)))
    item = _dict(status, "login_item")
    if item is not None:
        rows.append(("login item", _login_item(item)))
        if item.get("log_file"):
            rows.append(("log file", clean(item["log_file"])))
    alert = _dict(status, "alert")
    if alert is not None:
        rows.append(("alert", _alert(alert, status.now)))
    accounts = codex_sections(status)
    for codex in accounts:
        rows.append(("codex", _codex(codex, status.now, len(accounts) > 1)))
        if codex.get("alert"):
            rows.append(("alert", _alert(codex["alert"], status.now)))
    return [f"{label:<{LABEL_WIDTH}} {value}" for label, value in rows]


def codex_sections(status: Status) -> list[dict[str, Any]]:
    """The Codex side, an entry per account (homes of two accounts are kept apart)."""
    several = status.extra.get("codex_accounts")
    if isinstance(several, list) and all(isinstance(v, dict) for v in several) and several:
        return several
    one = _dict(status, "codex")
    return [one] if one is not None else []


def _codex(value: dict[str, Any], now: float, named: bool = False) -> str:
    """The Codex login in one line: its state, fingerprint, expiry and next refresh."""
    text = clean(value.get("login", ""))
    if value.get("fingerprint"):
        text += f", {clean(value['fingerprint'])}, expires " \
                f"{when(from_iso(value.get('expires_at')), now)}"
    refresh = value.get("refresh")
    if isinstance(refresh, dict) and refresh.get("next_refresh_at"):
        text += f", next refresh {when(from_iso(refresh['next_refresh_at']), now)}"
    homes = value.get("homes") or []
    if named:  # several accounts: which homes this one is
        return text + f" ({', '.join(clean(h) for h in homes)})"
    return text + f" ({len(homes)} home{'s' if len(homes) != 1 else ''})"


RESORT_STEP = ("a Codex home has changed account since the agent started: restart it "
               "(`credsync run`, or the login item) so that it keeps each account's homes")
_CODEX_NEXT_STEP = {
    "none": "no Codex login in any home: log in with `codex login`",
    "expired": "the Codex login has expired: run `credsync token --codex`, or start the agent",
    "relogin-required": "Codex's refresh was refused: log in again with `codex login`",
    "logged-out": "Codex was logged out on purpose: log in with `codex login`",
    "unreadable": "the Codex login's store cannot be read now: see the store rows",
}


def summary_steps(status: Status) -> list[str]:
    steps = []
    login = _LOGIN_NEXT_STEP.get(status.login_state)
    if login:
        steps.append(login)
    accounts = codex_sections(status)
    for codex in accounts:
        codex_step = _CODEX_NEXT_STEP.get(str(codex.get("login")))
        homes = [clean(h) for h in codex.get("homes") or []]
        if codex_step and len(accounts) > 1 and homes:  # which account: its homes say
            codex_step = codex_step.replace(
                "`codex login`", f"`CODEX_HOME={homes[0]} codex login`") + \
                f" (homes {', '.join(homes)})"
        if codex_step:
            steps.append(codex_step)
    if any(codex.get("resort") for codex in accounts):
        steps.append(RESORT_STEP)
    steps += _agent_steps(status)
    refresh = _dict(status, "refresh") or {}
    if refresh.get("state") in ("retrying", "offline"):
        steps.append("the last refresh did not get through; credsync retries by itself: "
                     "run `credsync doctor` to check the token endpoint")
    item = _dict(status, "login_item")
    if item is not None and not item.get("installed"):
        steps.append("`credsync install` starts the agent at every login")
    elif item is not None and item.get("enabled") is False:
        steps.append("the login item is disabled: `credsync install` enables it again")
    return steps


def _agent_steps(status: Status) -> list[str]:
    pid = status.pid if status.pid and status.pid > 0 else None
    if not status.running:
        return ["start the agent: `credsync install` (at every login) or `credsync run`"]
    if status.agent_state == "stopped" and pid:
        return [f"the agent is stopped (SIGSTOP, a debugger): `kill -CONT {pid}`"]
    if status.agent_state == "not responding":
        target = f"`kill {pid}`" if pid else "stop it"
        return [f"the agent has not finished a round for minutes: {target}, then start it "
                "again (`credsync run`, or `systemctl --user restart credsync.service`)"]
    return []


# --- the stores ------------------------------------------------------------------------------

_TROUBLE = frozenset({"error", "cleared", "logged-out", "missing"})


def _store_detail(s: StoreStatus) -> str:
    detail = clean(s.detail)
    if s.kind == "keychain" and "DBUS_SESSION_BUS_ADDRESS" in s.detail:
        detail += f" ({_NO_SESSION_HINT})"
    return detail


def _expiry(s: StoreStatus, now: float) -> str:
    ts = from_iso(s.expires_at)
    return when(ts, now) if ts is not None else "-"


def _shows_detail(s: StoreStatus) -> bool:
    return s.state in _TROUBLE or bool(s.detail and s.role == "holder" and s.state != "in-sync")


def _role(s: StoreStatus) -> str:
    """Whose store it is, in words: the CLI's own (Claude Code's or Codex's), the cluster's,
    credsync's copy, or a sink."""
    if s.kind.startswith("codex") and s.role == "holder":
        return "Codex's own"
    if s.kind == "cluster":
        return "the cluster's"
    return ROLE_WORDS.get(s.role, clean(s.role))


def store_lines(status: Status) -> list[str]:
    rows = [["stores", "state", "login", "expires", "kind"]]
    for s in status.stores:
        row = ["  " + clean(s.name), clean(s.state), clean(s.fingerprint or "-"),
               _expiry(s, status.now), _role(s)]
        if _shows_detail(s):
            row.append(_store_detail(s))
        rows.append(row)
    return aligned(rows)


def store_steps(status: Status) -> list[str]:
    steps = []
    fixer = "the agent fixes it within a second" if status.running and \
        status.agent_state == "running" else "start the agent and it fixes it"
    for s in status.stores:
        name = clean(s.name)
        if s.state == "error":
            steps.append(f"{name}: {_store_detail(s)}")
        elif s.state in ("stale", "cleared", "missing") and status.best is not None:
            steps.append(f"{name} is {s.state}: {fixer}")
    return steps


# --- MCP connector tokens ----------------------------------------------------------------------

def mcp_lines(status: Status) -> list[str]:
    if not status.mcp:
        return []
    dirs = [clean(d) for d, _ in status.mcp[0].entries]
    rows = [["mcp connectors", *dirs]]
    for key in status.mcp:
        cells = [f"{e.state} {e.fingerprint}" if e.fingerprint and e.state == "valid"
                 else e.state for _, e in key.entries]
        rows.append(["  " + clean(key.server), *cells])
    return aligned(rows)


def mcp_steps(status: Status) -> list[str]:
    steps = []
    for key in status.mcp:
        for directory, entry in key.entries:
            step = MCP_NEXT_STEP.get(entry.state)
            if step and entry.state != "missing":
                steps.append(f"mcp {clean(key.server)} in {clean(directory)} is "
                             f"{entry.state}: {step}")
    return steps


# --- sections added by other parts, shown generically until they get their own -----------------

_KNOWN_EXTRA = frozenset({"refresh", "login_item", "alert", "login", "cluster", "codex",
                          "codex_accounts"})


def _plain(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(clean(v) for v in value)
    return clean(value)


def extra_lines(status: Status) -> list[str]:
    lines = []
    for key, value in status.extra.items():
        if key in _KNOWN_EXTRA or not isinstance(value, dict):
            continue
        words = ", ".join(f"{clean(k)} {_plain(v)}" for k, v in value.items()
                          if v not in (None, "", []))
        lines.append(f"{clean(key):<{LABEL_WIDTH}} {words}")
    return lines


# --- the cluster (several machines sharing the login) -----------------------------------------

def cluster_lines(status: Status) -> list[str]:
    cluster = _dict(status, "cluster")
    if cluster is None:
        return []
    now = status.now
    state = clean(cluster.get("state", ""))
    if state == "offline":
        since = from_iso(cluster.get("offline_since"))
        state = (f"offline since {clean(cluster.get('offline_since'))} ({when(since, now)}: "
                 f"{clean(cluster.get('reason', ''))})")
    me = cluster.get("member") or {}
    rows = [("cluster", f"{state}, Redis {clean(cluster.get('redis', ''))}"),
            ("machine", f"{clean(me.get('name', ''))} ({clean(me.get('member_id', ''))})"
             + _offset(cluster.get("offset_s")))]
    gen = cluster.get("generation")
    if isinstance(gen, dict):
        rows.append(("generation", f"{clean(gen.get('gen'))} ({clean(gen.get('fingerprint'))}, "
                                   f"from {clean(_name(cluster, gen.get('by')))})"))
    if isinstance(cluster.get("last_propagation_ms"), (int, float)):
        rows.append(("propagation", f"{cluster['last_propagation_ms']:.1f} ms (the last login "
                                    "another machine published)"))
    lines = [f"{label:<{LABEL_WIDTH}} {value}" for label, value in rows]
    members = [m for m in cluster.get("members") or [] if isinstance(m, dict)]
    if members:
        lines.append("members:")
        lines += aligned([[f"{clean(m.get('name'))} ({clean(m.get('member_id'))})",
                           f"seen {when(from_iso(m.get('seen_at')), now)}",
                           _offset(m.get("offset_s")).strip(" ,") or "-",
                           f"gen {_count(m.get('gen'))}"] for m in members], "  ")
    return lines


def _offset(value: object) -> str:
    return f", clock {value:+.1f} s off Redis" if isinstance(value, (int, float)) else ""


def _count(value: object) -> str:
    return f"{int(value)}" if isinstance(value, (int, float)) else "-"


def _name(cluster: dict[str, Any], member_id: object) -> str:
    for m in cluster.get("members") or []:
        if isinstance(m, dict) and m.get("member_id") == member_id:
            return f"{m.get('name')} ({member_id})"
    return str(member_id)


def cluster_steps(status: Status) -> list[str]:
    cluster = _dict(status, "cluster")
    if cluster is None:
        return []
    if cluster.get("state") == "offline":
        return ["the cluster's Redis cannot be reached, so no machine refreshes (sessions "
                "keep their token): check that Redis runs and `credsync cluster status`"]
    if cluster.get("state") == "not reached":
        return ["the agent has not reached the cluster yet: start it (`credsync run`) and "
                "check `credsync cluster status`"]
    return []


SECTIONS: list[TextSection] = [
    TextSection(summary_lines, summary_steps),
    TextSection(store_lines, store_steps),
    TextSection(mcp_lines, mcp_steps),
    TextSection(cluster_lines, cluster_steps),
    TextSection(extra_lines),
]


def render(status: Status, sections: Sequence[TextSection] | None = None) -> str:
    """The whole view: each section's lines, a blank line between sections, then every next
    step (none when all is fine)."""
    chosen = SECTIONS if sections is None else sections
    blocks = [lines for lines in (s.lines(status) for s in chosen) if lines]
    steps = [step for s in chosen for step in s.steps(status)]
    out: list[str] = []
    for block in blocks:
        if out:
            out.append("")
        out += block
    if steps:
        out.append("")
        out += [f"next step: {step}" for step in dict.fromkeys(steps)]
    return "\n".join(out)
