"""The simulated authorisation server's memory: token families under strict single-use rotation.

A login starts a family. Every refresh token may be redeemed once; redeeming it issues the next
access and refresh token of the same family. Presenting a refresh token that was already redeemed
is treated as theft (RFC 9700 s.4.14.2): the whole family, every access and refresh token it ever
had, is revoked. Pure logic, no I/O; the caller passes ``now`` and holds the lock.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

RejectKind = Literal["unknown", "revoked", "reused", "expired"]
# Makes a family's next access token: (the family's metadata, now, lifetime) -> the token.
AccessFactory = Callable[[Mapping[str, Any], float, float], str]


@dataclass(frozen=True)
class Grant:
    access_token: str
    refresh_token: str
    expires_in: float
    refresh_token_expires_in: float | None
    family: int


class GrantRejected(Exception):
    """The refresh token is not redeemable; ``reason`` says why (never the token), ``kind``
    which case: an ``unknown`` token, one of a ``revoked`` family, a ``reused`` one (which has
    just revoked its family) or an ``expired`` one."""

    def __init__(self, reason: str, kind: RejectKind) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: RejectKind = kind


@dataclass
class _Family:
    revoked: bool = False
    tokens: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # who logged in (Codex's identity)


@dataclass
class _Refresh:
    family: int
    expires_at: float | None
    used: bool = False


def _lifetime_number(seconds: float) -> float:
    # expires_in is an integer in every real server; keep fractions only for fast tests.
    return int(seconds) if float(seconds).is_integer() else seconds


class Ledger:
    def __init__(self, access_lifetime_s: float, refresh_lifetime_s: float | None,
                 rotate: bool = True, access_factory: AccessFactory | None = None,
                 revoke_old_access: bool = False) -> None:
        self.access_lifetime_s = access_lifetime_s
        # A rotation also ends every older access token of the family (a server may do so:
        # the multi-machine note's T8); a session still on one is answered 401 at once.
        self.revoke_old_access = revoke_old_access
        self.refresh_lifetime_s = refresh_lifetime_s
        self.rotate = rotate
        self.access_factory = access_factory
        self.reused = 0  # spent refresh tokens presented again (each revoked its family)
        self.revoked_families = 0
        self._families: list[_Family] = []
        self._refresh: dict[str, _Refresh] = {}
        self._access: dict[str, tuple[int, float]] = {}

    def login(self, now: float, meta: Mapping[str, Any] | None = None) -> Grant:
        self._families.append(_Family(meta=dict(meta or {})))
        return self._issue(len(self._families) - 1, now, refresh_token=None)

    def redeem(self, refresh_token: str, now: float) -> Grant:
        record = self._refresh.get(refresh_token)
        if record is None:
            raise GrantRejected("unknown refresh token", "unknown")
        family = self._families[record.family]
        if family.revoked:
            raise GrantRejected("token family revoked", "revoked")
        if record.used:
            family.revoked = True
            self.revoked_families += 1
            self.reused += 1
            raise GrantRejected("refresh token reused: token family revoked", "reused")
        if record.expires_at is not None and now >= record.expires_at:
            raise GrantRejected("refresh token expired", "expired")
        if not self.rotate:
            return self._issue(record.family, now, refresh_token=refresh_token)
        record.used = True
        if self.revoke_old_access:
            for token, (family_no, expires_at) in list(self._access.items()):
                if family_no == record.family:
                    self._access[token] = (family_no, min(expires_at, now))
        return self._issue(record.family, now, refresh_token=None)

    def access_valid(self, access_token: str, now: float) -> bool:
        entry = self._access.get(access_token)
        if entry is None:
            return False
        family, expires_at = entry
        return not self._families[family].revoked and now < expires_at

    def issued(self) -> list[str]:
        """Every token handed out, access and refresh (for scans: none may leak anywhere)."""
        return [t for family in self._families for t in family.tokens]

    def family_of(self, token: str) -> int | None:
        if token in self._access:
            return self._access[token][0]
        record = self._refresh.get(token)
        return record.family if record else None

    def meta_of(self, family: int) -> Mapping[str, Any]:
        return dict(self._families[family].meta)

    def _issue(self, family: int, now: float, refresh_token: str | None) -> Grant:
        if self.access_factory is not None:
            access = self.access_factory(self._families[family].meta, now,
                                         self.access_lifetime_s)
        else:
            access = "sim-at-" + secrets.token_urlsafe(24)
        self._access[access] = (family, now + self.access_lifetime_s)
        self._families[family].tokens.append(access)
        refresh_in = self.refresh_lifetime_s
        if refresh_token is None:
            refresh_token = "sim-rt-" + secrets.token_urlsafe(24)
            expires_at = None if refresh_in is None else now + refresh_in
            self._refresh[refresh_token] = _Refresh(family, expires_at)
            self._families[family].tokens.append(refresh_token)
        return Grant(access, refresh_token, _lifetime_number(self.access_lifetime_s),
                     None if refresh_in is None else _lifetime_number(refresh_in), family)
