"""Deciding what every store should hold: a pure function of what the stores hold now.

The freshest valid credential wins (latest ``expiresAt``; cleared, blank, unparsable or
server-rejected ones never win). Every store that differs gets it, except:
- a deliberate logout is respected: a document whose ``claudeAiOauth`` entry is gone, or a file
  removed after it held a login; nothing is written there until the user logs in there again;
- a damaged store (the CLI's cleared form, or garbage) is restored at most once with the same
  credential: if it is cleared again, a session was refused that credential by the server, so
  restoring it again would only start a loop of rejected refreshes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.credential import Credential, Reading, ReadState, freshest
from agent.state import token_hash


@dataclass
class StoreMemory:
    """What the agent remembers of one store across rounds (and restarts)."""

    seen_valid: bool = False
    logged_out_since: float | None = None
    restored_with: list[str] = field(default_factory=list)  # fingerprints restored once

    def to_json(self) -> dict[str, object]:
        return {"seen_valid": self.seen_valid, "logged_out_since": self.logged_out_since,
                "restored_with": self.restored_with[-8:]}

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> StoreMemory:
        since = obj.get("logged_out_since")
        restored = obj.get("restored_with")
        return cls(seen_valid=bool(obj.get("seen_valid")),
                   logged_out_since=float(since) if isinstance(since, (int, float)) else None,
                   restored_with=[str(x) for x in restored] if isinstance(restored, list) else [])


@dataclass
class Plan:
    winner: Credential | None
    writes: list[str] = field(default_factory=list)  # store names to write the winner to
    restores: list[str] = field(default_factory=list)  # of those, the damaged ones
    newly_rejected: list[str] = field(default_factory=list)  # refresh-token hashes
    logged_out: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # garbage still inside its grace time


def choose_winner(candidates: list[Credential], rejected: set[str],
                  spent: set[str] | None = None) -> Credential | None:
    """The freshest credential the server has not refused. One whose refresh token was already
    sent loses to any whose token was not: after a refresh, the answer wins even when the server
    gave it a shorter life than the credential it replaces."""
    usable = [c for c in candidates
              if not c.is_blank and token_hash(c.refresh_token) not in rejected]
    if not spent:
        return freshest(usable)
    unspent = [c for c in usable if token_hash(c.refresh_token) not in spent]
    return freshest(unspent) or freshest(usable)


def plan_round(
    readings: Mapping[str, Reading],
    sources: set[str],
    memory: dict[str, StoreMemory],
    last_good: Credential | None,
    rejected: set[str],
    now: float,
    settled: set[str] | None = None,
    logout_aware: set[str] | None = None,
    spent: set[str] | None = None,
) -> Plan:
    """Decide one round. ``memory`` is updated in place; ``settled`` names garbage stores whose
    content has stayed the same long enough to be repaired (None: all of them);
    ``logout_aware`` names the stores where a removal means a logout (None: every source)."""
    candidates = [r.valid for n, r in readings.items() if n in sources and r.valid]
    winner = choose_winner([*candidates, *([last_good] if last_good else [])], rejected, spent)
    plan = Plan(winner)
    aware = sources if logout_aware is None else logout_aware
    for name, reading in readings.items():
        mem = memory.setdefault(name, StoreMemory())
        _decide(name, reading, mem, plan, now, settled, name in aware)
    if plan.newly_rejected:
        # A credential the server refused may have been the winner: decide again without it.
        rejected |= set(plan.newly_rejected)
        return plan_round(readings, sources, memory, last_good, rejected, now, settled,
                          logout_aware, spent)
    return plan


def _decide(name: str, reading: Reading, mem: StoreMemory, plan: Plan, now: float,
            settled: set[str] | None, logout_aware: bool) -> None:
    winner = plan.winner
    state = reading.state
    if state is ReadState.VALID:
        mem.seen_valid, mem.logged_out_since = True, None
        assert reading.credential is not None
        if winner is not None and not _holds(reading.credential, winner):
            plan.writes.append(name)
        return
    removed = state is ReadState.LOGGED_OUT or (state is ReadState.MISSING and mem.seen_valid)
    if removed and logout_aware:
        mem.logged_out_since = mem.logged_out_since or now
        plan.logged_out.append(name)
        return
    if mem.logged_out_since is not None or winner is None or state is ReadState.ERROR:
        if mem.logged_out_since is not None:
            plan.logged_out.append(name)
        return
    if state is ReadState.MISSING:
        plan.writes.append(name)
        return
    _decide_damaged(name, state, mem, plan, winner, settled)


def _decide_damaged(name: str, state: ReadState, mem: StoreMemory, plan: Plan,
                    winner: Credential, settled: set[str] | None) -> None:
    if state is ReadState.INVALID and settled is not None and name not in settled:
        plan.waiting.append(name)
        return
    if state is ReadState.CLEARED and winner.fingerprint in mem.restored_with:
        # Cleared again after we restored this very credential: the server refused it.
        plan.newly_rejected.append(token_hash(winner.refresh_token))
        return
    if state is ReadState.CLEARED:
        mem.restored_with.append(winner.fingerprint)
    plan.writes.append(name)
    plan.restores.append(name)


def _holds(current: Credential, winner: Credential) -> bool:
    # Sinks read back only the access token; a full store must hold the very same document.
    if not current.refresh_token:
        return current.access_token == winner.access_token
    return current.same_tokens(winner)
