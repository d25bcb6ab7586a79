"""When to tell the user that the Claude login needs them, and what to say.

A pure policy: no I/O, time from the injected clock. The agent feeds one ``AuthObservation`` per
round to ``AlertPolicy.observe`` and delivers the ``Notice`` values it gets back.

Rules (issue 4):
- Re-login required: one critical notice per login (credential fingerprint), then one reminder
  every ``remind_every_h`` while it lasts, never more often, whatever the agent observes in between.
  While an alert is active, failures of further logins join it (same fix, same notice stream).
  A failure that names no login (every store cleared) is blamed on the last login seen valid.
- Ahead of time: while the current login's refresh token ends within ``warn_before_days``, one
  normal-urgency notice per 24 hours saying when it ends and how to renew it.
- Recovered: the first valid login whose fingerprint the alert did not declare dead clears the
  alert and gives one "restored" notice (unless ``notify_on_restore`` is false, or the user was
  never told about this episode).
- Cluster offline: while refreshing is held because the cluster's Redis cannot be reached
  (other machines share the login, so refreshing alone could spend its token twice), one
  normal notice once the refresh is due, and one critical notice 30 minutes before the CLI's
  own 5-minute refresh window, when its sessions would start to fail; once per outage.
- Never: on transient failures (an observation without ``relogin_required``), on start or stop.

The state survives a restart through ``to_json``/``from_json``, so a restarted agent does not
repeat an alert the user has already seen. Texts carry fingerprints at most, never a token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal

from agent.clock import Clock
from agent.config import NotifySection
from agent.credential import redact

__all__ = [
    "Alert",
    "AlertPolicy",
    "AuthObservation",
    "Event",
    "Notice",
    "Urgency",
]

log = logging.getLogger(__name__)

Event = Literal["relogin-required", "relogin-reminder", "refresh-token-expiring", "restored",
                "cluster-offline"]
Urgency = Literal["critical", "normal"]

DAY_S = 86_400.0
STATE_VERSION = 1
# Enough to remember every login of a long-running agent; old ones cannot come back to life.
MAX_REMEMBERED_LOGINS = 64
MAX_REASON_CHARS = 200
FIX = "run `claude auth login` (or start `claude` and type /login, in any session)"


@dataclass(frozen=True)
class Product:
    """Whose login the notices are about: the names and the fix they give."""

    name: str  # "Claude Code"
    login: str  # "Claude login"
    command: str  # the one command that logs in again
    fix: str  # the sentence that says how
    dirs: str = "config dirs"  # what the dirs whose sessions use the login are called


CLAUDE = Product("Claude Code", "Claude login", "claude auth login", FIX)
CODEX = Product("Codex", "Codex login", "codex login", "run `codex login` (in any terminal)",
                "Codex homes")
CLI_WINDOW_S = 300.0  # the CLI refreshes when less than this is left
CRITICAL_LEAD_S = 1800.0  # the critical cluster notice comes this long before that window


@dataclass(frozen=True)
class AuthObservation:
    """What the agent knows about the login after one round.

    ``login_fingerprint`` names the login that failed (None when nothing is left to name);
    ``valid_login_fingerprint`` and ``refresh_token_expires_at`` describe the current valid
    login, if there is one. ``since`` is wall-clock seconds.
    """

    relogin_required: bool
    reason: str = ""
    affected_dirs: Sequence[str] = ()
    since: float | None = None
    login_fingerprint: str | None = None
    refresh_token_expires_at: float | None = None
    valid_login_fingerprint: str | None = None
    # Refreshing is held (the cluster's Redis unreachable) since ``held_since``; the login
    # was due at ``due_at`` and expires at ``expires_at``.
    held: str = ""
    held_since: float | None = None
    due_at: float | None = None
    expires_at: float | None = None

    def __post_init__(self) -> None:
        # A caller's list must not change the observation afterwards.
        object.__setattr__(self, "affected_dirs", tuple(self.affected_dirs))


@dataclass(frozen=True)
class Notice:
    event: Event
    title: str
    body: str
    urgency: Urgency
    affected_dirs: tuple[str, ...]
    time: float

    @property
    def time_iso(self) -> str:
        return datetime.fromtimestamp(self.time, timezone.utc).isoformat()


@dataclass(frozen=True)
class Alert:
    """The active re-login alert, as ``credsync status`` shows it until it clears."""

    event: Event
    title: str
    body: str
    urgency: Urgency
    since: float
    affected_dirs: tuple[str, ...]
    fingerprints: tuple[str, ...]
    last_notified_at: float | None


@dataclass
class _Episode:
    """One stretch of time during which a re-login is required."""

    reason: str
    since: float
    dirs: list[str] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    notified: bool = False  # whether the user heard about this episode (gates "restored")


class AlertPolicy:
    def __init__(self, settings: NotifySection, clock: Clock,
                 product: Product = CLAUDE) -> None:
        self._settings = settings
        self._clock = clock
        self.product = product
        self._episode: _Episode | None = None
        self._alerted: list[str] = []  # fingerprints the user was told about, oldest first
        self._last_relogin_notice_at: float | None = None
        self._warned_at: float | None = None
        # The last login seen valid: a failure that names no login (every store cleared) is
        # blamed on it, so that seeing it again is not mistaken for a recovery.
        self._last_valid: str | None = None
        # The cluster outage notices given: (outage start, stages notified: 1 normal, 2 both)
        self._held: tuple[float, int] | None = None

    @property
    def _remind_every_s(self) -> float:
        return self._settings.remind_every_h * 3600.0

    @property
    def active_alert(self) -> Alert | None:
        ep = self._episode
        if ep is None:
            return None
        title, body = _relogin_text(ep, self._clock.now(), self.product, reminder=False)
        return Alert("relogin-required", title, body, "critical", ep.since, tuple(ep.dirs),
                     tuple(ep.fingerprints), self._last_relogin_notice_at)

    def observe(self, obs: AuthObservation) -> list[Notice]:
        now = self._clock.now()
        if obs.relogin_required:
            if obs.login_fingerprint is None and self._last_valid is not None:
                obs = replace(obs, login_fingerprint=self._last_valid)
            return self._on_relogin_required(obs, now)
        if obs.valid_login_fingerprint is not None:
            self._last_valid = obs.valid_login_fingerprint
        held = self._maybe_warn_held(obs, now)
        if held:
            return held
        ep = self._episode
        if ep is not None:
            fp = obs.valid_login_fingerprint
            if fp is not None and fp not in ep.fingerprints:
                return self._recover(ep, now)
            # Still no new login (e.g. a transient failure): the alert lasts, so may a reminder.
            return self._maybe_remind(ep, now)
        return self._maybe_warn_ahead(obs, now)

    # -- re-login required -------------------------------------------------------------------

    def _on_relogin_required(self, obs: AuthObservation, now: float) -> list[Notice]:
        fp = obs.login_fingerprint
        ep = self._episode
        if ep is None:
            ep = self._episode = _Episode(_clean_reason(obs.reason),
                                          obs.since if obs.since is not None else now)
            _merge(ep, obs)
            # A login the user already heard about (the alert flapped) gets no second first
            # notice: the reminder cadence carries on from the last notice instead.
            if fp is None or fp not in self._alerted:
                self._remember(ep.fingerprints)
                return [self._notice(ep, now, reminder=False)]
            return self._maybe_remind(ep, now)
        ep.reason = _clean_reason(obs.reason) or ep.reason
        _merge(ep, obs)
        # A further login failing while the alert lasts needs the same fix: no extra notice.
        self._remember(ep.fingerprints)
        return self._maybe_remind(ep, now)

    def _maybe_remind(self, ep: _Episode, now: float) -> list[Notice]:
        last = self._last_relogin_notice_at
        if last is not None and now < last:
            # The wall clock went back: count from now, so a reminder is not held off for days.
            self._last_relogin_notice_at = last = now
        if last is not None and now - last < self._remind_every_s:
            return []
        return [self._notice(ep, now, reminder=last is not None)]

    def _notice(self, ep: _Episode, now: float, *, reminder: bool) -> Notice:
        ep.notified = True
        self._last_relogin_notice_at = now
        title, body = _relogin_text(ep, now, self.product, reminder=reminder)
        event: Event = "relogin-reminder" if reminder else "relogin-required"
        return Notice(event, title, body, "critical", tuple(ep.dirs), now)

    def _remember(self, fingerprints: Sequence[str]) -> None:
        for fp in fingerprints:
            if fp not in self._alerted:
                self._alerted.append(fp)
        del self._alerted[:-MAX_REMEMBERED_LOGINS]

    # -- recovery and warn-ahead -------------------------------------------------------------

    def _recover(self, ep: _Episode, now: float) -> list[Notice]:
        self._episode = None
        log.info("re-login alert cleared: a new valid login is in place")
        if not (ep.notified and self._settings.notify_on_restore):
            return []
        title = f"{self.product.name} sessions restored"
        body = (f"A new {self.product.login} is in place; credsync keeps it in step across "
                f"{_dirs_text(ep.dirs, self.product)}. Nothing more to do. "
                f"(A new login had been needed since {_when(ep.since)}.)")
        return [Notice("restored", title, body, "normal", tuple(ep.dirs), now)]

    def _maybe_warn_ahead(self, obs: AuthObservation, now: float) -> list[Notice]:
        ends = obs.refresh_token_expires_at
        window = self._settings.warn_before_days * DAY_S
        if ends is None or window <= 0 or now >= ends or ends - now > window:
            return []
        last = self._warned_at
        if last is not None and last <= now < last + DAY_S:
            return []
        self._warned_at = now
        left = _duration(ends - now)
        title = (f"{self.product.name} login ends in {left}: renew it with "
                 f"{self.product.command}")
        used_by = _dirs_text(obs.affected_dirs, self.product)
        body = (f"The {self.product.login} used by {used_by} cannot be "
                f"renewed after {_when(ends)} (in {left}). To renew it before then, "
                f"{self.product.fix}.")
        return [Notice("refresh-token-expiring", title, body, "normal",
                       tuple(obs.affected_dirs), now)]

    def _maybe_warn_held(self, obs: AuthObservation, now: float) -> list[Notice]:
        if not obs.held or obs.held_since is None or obs.expires_at is None:
            self._held = None
            return []
        start, stage = self._held if self._held is not None and \
            self._held[0] == obs.held_since else (obs.held_since, 0)
        critical_at = obs.expires_at - CLI_WINDOW_S - CRITICAL_LEAD_S
        due = obs.due_at if obs.due_at is not None else critical_at
        want = 2 if now >= critical_at else 1 if now >= due else 0
        if want <= stage:
            self._held = (start, stage)
            return []
        self._held = (start, want)
        left = _duration(obs.expires_at - now)
        if want == 2:
            title = f"{self.product.name} login expires in {left}: credsync cannot renew it"
            urgency: Urgency = "critical"
        else:
            title = f"credsync is not renewing the {self.product.login}: the cluster is offline"
            urgency = "normal"
        body = (f"{_clean_reason(obs.held)}. Offline since {_when(start)}. The login expires "
                f"at {_when(obs.expires_at)} (in {left}). Bring Redis back, or remove this "
                "machine from the cluster (credsync cluster leave) to renew it alone.")
        return [Notice("cluster-offline", title, body, urgency, tuple(obs.affected_dirs), now)]

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({
            "version": STATE_VERSION,
            "episode": asdict(self._episode) if self._episode else None,
            "alerted": self._alerted,
            "last_relogin_notice_at": self._last_relogin_notice_at,
            "warned_at": self._warned_at,
            "last_valid": self._last_valid,
            "held": list(self._held) if self._held is not None else None,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, settings: NotifySection, clock: Clock,
                  product: Product = CLAUDE) -> AlertPolicy:
        """Restore a saved policy; unreadable state starts afresh (at worst one repeat notice)."""
        policy = cls(settings, clock, product)
        try:
            policy._load(json.loads(text))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            log.warning("alert state unreadable (%s); starting afresh, an alert may repeat once",
                        type(exc).__name__)
            return cls(settings, clock, product)
        return policy

    def _load(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError("unknown alert state version")
        ep = data["episode"]
        if ep is not None:
            self._episode = _Episode(
                reason=str(ep["reason"]), since=_num(ep["since"]),
                dirs=[str(d) for d in ep["dirs"]],
                fingerprints=[str(f) for f in ep["fingerprints"]],
                notified=bool(ep["notified"]))
        self._alerted = [str(f) for f in data["alerted"]][-MAX_REMEMBERED_LOGINS:]
        self._last_relogin_notice_at = _opt_num(data["last_relogin_notice_at"])
        self._warned_at = _opt_num(data["warned_at"])
        last_valid = data["last_valid"]
        self._last_valid = None if last_valid is None else str(last_valid)
        held = data.get("held")  # absent in state saved before the cluster existed
        if isinstance(held, list) and len(held) == 2:
            self._held = (_num(held[0]), int(_num(held[1])))


def _merge(ep: _Episode, obs: AuthObservation) -> None:
    for d in obs.affected_dirs:
        if d not in ep.dirs:
            ep.dirs.append(d)
    if obs.login_fingerprint is not None and obs.login_fingerprint not in ep.fingerprints:
        ep.fingerprints.append(obs.login_fingerprint)
    if obs.since is not None:
        ep.since = min(ep.since, obs.since)


def _relogin_text(ep: _Episode, now: float, product: Product, *,
                  reminder: bool) -> tuple[str, str]:
    title = f"{product.name} needs a new login: run {product.command}"
    if reminder:
        title = "Reminder: " + title
    cause = ep.reason[:1].upper() + ep.reason[1:] if ep.reason else "The login was rejected"
    body = (f"{cause}: credsync cannot renew the {product.login} any more. To fix it, "
            f"{product.fix}; "
            f"credsync then copies the new login everywhere.\n"
            f"Affected {product.dirs}: {_dirs_text(ep.dirs, product)}.\n"
            f"Since {_when(ep.since)}" + (f" ({_duration(now - ep.since)} ago)."
                                          if now - ep.since >= 60 else "."))
    return title, body


def _clean_reason(reason: str) -> str:
    # One line, bounded: it lands in a notification title area and in logs. Anything token-like
    # is redacted: a reason is often an error message, and a notice must never carry a token.
    return " ".join(redact(reason).split())[:MAX_REASON_CHARS]


def _dirs_text(dirs: Sequence[str], product: Product) -> str:
    return ", ".join(dirs) if dirs else f"the configured {product.dirs}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _duration(seconds: float) -> str:
    minutes = max(int(seconds // 60), 0)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} day{'s' if days != 1 else ''}" + (f" {hours} h" if hours else "")
    if hours:
        return f"{hours} h" + (f" {mins} min" if mins else "")
    return f"{mins} min"


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("expected a number")
    return float(value)


def _opt_num(value: Any) -> float | None:
    return None if value is None else _num(value)
