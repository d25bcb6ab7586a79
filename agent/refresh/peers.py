"""Other machines that share the login: what the refresh coordinator asks them, inside its
locks (implemented by ``agent.cluster.node.ClusterNode``; absent on a single machine).

The order for one refresh: ``hold`` (may this machine refresh at all now?), ``check`` (did a
newer login arrive from another machine? then adopt it, send nothing), the journal line,
``claim`` (only the claim's holder sends), ``expired`` right before sending, then ``sent``,
``unsent`` (certainly not sent: the claim is given back) or ``lost`` (maybe sent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from agent.credential import Credential


@dataclass(frozen=True)
class Hold:
    """Why this machine sends nothing now; ``retry_after_s`` until it looks again."""

    reason: str
    retry_after_s: float
    relogin: bool = False  # the claim's holder lost its answer: the token may be spent
    adopt: bool = False  # a newer login is there: take it instead


@dataclass(frozen=True)
class Claim:
    """The right to send one refresh token. ``result`` is the cluster's own record (None when
    this machine refreshes alone: Redis unreachable and no other machine known)."""

    result: Any
    at_mono: float


class Peers(Protocol):
    def hold(self, now: float) -> Hold | None: ...
    def check(self) -> bool: ...
    def claim(self, cred: Credential) -> Claim | Hold: ...
    def expired(self, claim: Claim) -> bool: ...
    def sent(self, claim: Claim, new: Credential, expires_in: float | None) -> None: ...
    def unsent(self, claim: Claim) -> None: ...
    def lost(self, claim: Claim) -> None: ...
    def lost_token(self, cred: Credential) -> None: ...
