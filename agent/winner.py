"""Which login wins: one pure function, used by the loop, ``token``, ``refresh`` and ``status``.

Inputs are what the stores hold now, what each store is for (its role), what credsync
remembers of them, the guardian's copy, and the journal (spent and refused refresh tokens).

- Holders are the CLI's own stores (its credential files; on macOS its Keychain items). A login
  lives only while some holder has it: a holder that held a login and lost it (file removed,
  ``claudeAiOauth`` removed) is logged out, and when no holder holds the login any more, it is
  over: no winner, so nothing is refreshed or written, even though copies still hold it.
- Copies (credsync's own keychain item, the last-good file) may win, but never bring back a
  login no holder has. Outputs (sinks) are never candidates and never judged.
- A candidate never wins when it is blank (the CLI's cleared form, 2.1.332's ``refreshToken: ""``
  dead-login form among them), when the server refused its refresh token, or when it claims to
  expire further ahead than any real login lives (``max_lifetime_s``). Among the rest, one whose
  refresh token was not yet sent beats one whose token was (a refresh answer wins even when the
  server gave it a shorter life), then the latest ``expiresAt`` wins.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.credential import Credential, Reading, ReadState
from agent.ledger import StoreMemory, token_hash
from agent.stores.base import Role

__all__ = ["LoginState", "Role", "Rules", "Verdict", "choose", "judge"]


class LoginState(str, enum.Enum):
    OK = "ok"
    EXPIRED = "expired"  # the winner's access token has expired: a refresh can still fix it
    NONE = "none"  # no holder has ever held a login here
    LOGGED_OUT = "logged-out"  # every holder that held the login removed it
    RELOGIN = "relogin-required"  # a holder has the login, but no usable copy of it is left
    UNREADABLE = "unreadable"  # the stores that hold the login cannot be read just now


@dataclass(frozen=True)
class Rules:
    """The parts of the verdict that are settings or facts of the moment."""

    now: float
    max_lifetime_s: float = 86400.0
    rejected: frozenset[str] = frozenset()
    spent: frozenset[str] = frozenset()

    def usable(self, cred: Credential) -> bool:
        return (not cred.is_blank and token_hash(cred.refresh_token) not in self.rejected
                and self.plausible(cred))

    def plausible(self, cred: Credential) -> bool:
        return cred.expires_at <= self.now + self.max_lifetime_s

    def rank(self, cred: Credential) -> tuple[bool, bool, int]:
        unspent = token_hash(cred.refresh_token) not in self.spent
        return self.usable(cred), unspent, cred.expires_at_ms

    def beats(self, cred: Credential, other: Credential | None) -> bool:
        """Does ``cred`` replace ``other`` by this rule (the one order every decision uses)?"""
        return other is None or self.rank(cred) > self.rank(other)


@dataclass(frozen=True)
class Verdict:
    winner: Credential | None
    state: LoginState
    reason: str = ""
    logged_out: tuple[str, ...] = ()  # holders whose login was removed
    live: tuple[str, ...] = ()  # holders that hold the login (valid, damaged or unreadable)
    refused: tuple[str, ...] = field(default=())  # candidates dropped: refused or implausible

    @property
    def relogin_required(self) -> bool:
        return self.state is LoginState.RELOGIN


def holder_logged_out(reading: Reading, memory: StoreMemory | None) -> bool:
    if reading.state is ReadState.VALID:
        return False
    if reading.state is ReadState.LOGGED_OUT:
        return True
    seen = memory is not None and memory.seen_valid
    since = memory is not None and memory.logged_out_since is not None
    return (reading.state is ReadState.MISSING and seen) or (
        since and reading.state is not ReadState.ERROR)


def judge(
    readings: Mapping[str, Reading],
    roles: Mapping[str, Role],
    memory: Mapping[str, StoreMemory],
    last_good: Credential | None,
    rules: Rules,
) -> Verdict:
    holders = [n for n in readings if roles.get(n) is Role.HOLDER]
    logged_out = tuple(n for n in holders if holder_logged_out(readings[n], memory.get(n)))
    live = tuple(n for n in holders if n not in logged_out
                 and readings[n].state is not ReadState.MISSING)
    if not live:
        state = LoginState.LOGGED_OUT if logged_out else LoginState.NONE
        why = ("the login was removed from every config dir (a logout)" if logged_out
               else "no login in any config dir")
        return Verdict(None, state, why, logged_out)
    candidates = [r.valid for n, r in readings.items()
                  if r.valid is not None and roles.get(n) in (Role.HOLDER, Role.COPY)
                  and n not in logged_out]
    if last_good is not None:
        candidates.append(last_good)
    winner = choose(candidates, rules)
    refused = tuple(c.fingerprint for c in candidates if not rules.usable(c))
    if winner is None and not candidates and all(
            readings[n].state is ReadState.ERROR for n in live):
        return Verdict(None, LoginState.UNREADABLE, readings[live[0]].detail, logged_out, live)
    if winner is None:
        return Verdict(None, LoginState.RELOGIN, _why_none(candidates, rules), logged_out,
                       live, refused)
    state = LoginState.OK if winner.expires_at > rules.now else LoginState.EXPIRED
    return Verdict(winner, state, "", logged_out, live, refused)


def choose(candidates: Iterable[Credential], rules: Rules) -> Credential | None:
    usable = [c for c in candidates if rules.usable(c)]
    return max(usable, key=rules.rank, default=None)


def _why_none(candidates: list[Credential], rules: Rules) -> str:
    if any(not c.is_blank and token_hash(c.refresh_token) in rules.rejected
           for c in candidates):
        return "the token server refused the login's refresh token"
    if any(not c.is_blank and not rules.plausible(c) for c in candidates):
        return ("the only login claims to expire implausibly far ahead (over "
                f"{rules.max_lifetime_s / 3600:g} h); log in again")
    return "every copy of the login was cleared"
