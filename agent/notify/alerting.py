"""From what the agent saw in a round to what the user is told (glue: policy + delivery + state).

A re-login is required exactly when the winner rule says so (``agent.winner``): a config dir
holds the login, but every copy of it is cleared, garbage or refused by the server. A logout is
not a reason to alert; transient failures never count (they are the refresh driver's business
while the token works); a refresh token past its stated expiry is tried, and the server decides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from agent.clock import Clock
from agent.config import NotifySection
from agent.errors import StoreError
from agent.fsutil import atomic_write, read_bytes
from agent.ledger import ALERTS_FILE, MAX_STATE_BYTES, Ledger
from agent.notify.alerts import CLAUDE, Alert, AlertPolicy, AuthObservation, Notice, Product
from agent.winner import Verdict

log = logging.getLogger("credsync.alerting")


class NotifierLike(Protocol):
    def send(self, notice: Notice) -> object: ...
    def close(self) -> None: ...


def observation(verdict: Verdict, config_dirs: Mapping[str, str], now: float) -> AuthObservation:
    """What the alert policy is told of one round's verdict (``config_dirs`` maps a file
    store's name to its dir)."""
    winner = verdict.winner
    if winner is not None:
        return AuthObservation(False, valid_login_fingerprint=winner.fingerprint,
                               refresh_token_expires_at=winner.refresh_token_expires_at)
    if not verdict.relogin_required:
        return AuthObservation(False)  # nothing there, or a deliberate logout everywhere
    affected = [d for name, d in config_dirs.items() if name not in verdict.logged_out]
    fingerprint = verdict.refused[0] if verdict.refused else None
    return AuthObservation(True, verdict.reason, affected, now, fingerprint)


class Alerting:
    def __init__(self, settings: NotifySection, notifier: NotifierLike, state: Ledger,
                 clock: Clock, product: Product = CLAUDE) -> None:
        self.notifier = notifier
        self.state = state
        text = _saved_text(state)
        self.policy = (AlertPolicy.from_json(text, settings, clock, product) if text
                       else AlertPolicy(settings, clock, product))
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


def load_active_alert(state: Ledger, settings: NotifySection, clock: Clock,
                      product: Product = CLAUDE) -> Alert | None:
    """The alert as the agent last saved it, for ``credsync status``."""
    text = _saved_text(state)
    return AlertPolicy.from_json(text, settings, clock, product).active_alert if text else None


def _saved_text(ledger: Ledger) -> str:
    # Undecodable bytes become a parse error in the policy: a damaged file starts it afresh; a
    # FIFO or a directory there reads as nothing instead of hanging or failing.
    try:
        raw = read_bytes(ledger.file(ALERTS_FILE), MAX_STATE_BYTES)
    except StoreError:
        return ""
    return raw.decode(errors="replace") if raw else ""
