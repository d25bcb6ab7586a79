"""From what the agent saw in a round to what the user is told (glue: policy + delivery + state).

``observation()`` decides whether a re-login is really required:
- no usable login is left (every copy cleared, garbage or refused by the server) while the user
  did not log out on purpose; or
- the refresh of the current login was refused and nothing fresher exists; or
- the refresh token's own expiry (``refreshTokenExpiresAt``) has passed.
Transient failures never count: they are the refresh driver's business while the token works.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from agent.alerts import Alert, AlertPolicy, AuthObservation, Notice
from agent.clock import Clock
from agent.config import NotifySection
from agent.credential import Credential, Reading, ReadState
from agent.errors import StoreError
from agent.fsutil import atomic_write
from agent.state import StateDir

log = logging.getLogger("credsync.alerting")

ALERTS_FILE = "alerts.json"


class NotifierLike(Protocol):
    def send(self, notice: Notice) -> object: ...
    def close(self) -> None: ...


def observation(
    winner: Credential | None,
    readings: Mapping[str, Reading],
    config_dirs: Mapping[str, str],
    logged_out: Sequence[str],
    auth: Mapping[str, object],
    last_good: Credential | None,
    now: float,
) -> AuthObservation:
    """``config_dirs`` maps a file store's name to its dir; ``auth`` is refresh.json's auth."""
    affected = [d for name, d in config_dirs.items() if name not in logged_out]
    refused = auth.get("state") == "relogin-required"
    since = auth.get("since")
    since_f = float(since) if isinstance(since, (int, float)) else now
    auth_fp = auth.get("fingerprint")
    if winner is not None:
        rt_end = winner.refresh_token_expires_at
        if rt_end is not None and rt_end <= now:
            return AuthObservation(True, "the login's refresh token has expired", affected,
                                   rt_end, winner.fingerprint)
        if refused and auth_fp == winner.fingerprint:
            return AuthObservation(True, str(auth.get("reason", "")), affected, since_f,
                                   winner.fingerprint)
        return AuthObservation(False, valid_login_fingerprint=winner.fingerprint,
                               refresh_token_expires_at=rt_end)
    damaged = any(r.state in (ReadState.CLEARED, ReadState.INVALID) for r in readings.values())
    if not (refused or damaged) or not affected:
        return AuthObservation(False)  # nothing there, or a deliberate logout everywhere
    reason = str(auth.get("reason")) if refused else "every copy of the login was cleared"
    fp = auth_fp if isinstance(auth_fp, str) else (last_good.fingerprint if last_good else None)
    return AuthObservation(True, reason, affected, since_f if refused else now, fp)


class Alerting:
    def __init__(self, settings: NotifySection, notifier: NotifierLike, state: StateDir,
                 clock: Clock) -> None:
        self.notifier = notifier
        self.state = state
        saved = state.file(ALERTS_FILE)
        # Undecodable bytes become a parse error below: a damaged file starts the policy afresh.
        text = saved.read_text(errors="replace") if saved.is_file() else ""
        self.policy = (AlertPolicy.from_json(text, settings, clock) if text
                       else AlertPolicy(settings, clock))
        self._saved = self.policy.to_json()
        self.sent: list[Notice] = []

    @property
    def active(self) -> Alert | None:
        return self.policy.active_alert

    def observe(self, obs: AuthObservation) -> list[Notice]:
        notices = self.policy.observe(obs)
        for notice in notices:
            report = self.notifier.send(notice)
            log.info("notified %s: %s", notice.event, report)
            self.sent.append(notice)
        current = self.policy.to_json()
        if current != self._saved:
            try:
                self.state.ensure()
                atomic_write(self.state.file(ALERTS_FILE), current.encode())
                self._saved = current
            except StoreError as exc:
                log.warning("cannot save alert state: %s", exc)
        return notices

    def close(self) -> None:
        self.notifier.close()


def load_active_alert(state: StateDir, settings: NotifySection, clock: Clock) -> Alert | None:
    """The alert as the agent last saved it, for ``credsync status``."""
    saved = state.file(ALERTS_FILE)
    if not saved.is_file():
        return None
    try:
        return AlertPolicy.from_json(saved.read_text(errors="replace"), settings,
                                     clock).active_alert
    except OSError:
        return None
