"""This member's record of every claim it has heard of, so that a Redis that forgot can be
re-seeded before anyone may claim again.

One append-only text file per login (``cluster-gossip`` in the scope dir), fsynced per line:
``C <claim> <agent> <fence> <unix time>`` claimed (this member's own line is written before its
CLAIM reaches Redis, with fence 0 until the answer comes), ``L <claim> <agent> <fence>`` marked
lost, ``R <claim> <agent>`` released by its holder. Claim ids are HMACs under the cluster key,
never a token or a plain hash of one. Only the newest ``keep`` (64) live claims are kept; the
file is rewritten (atomically) when it grows past four times that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StoreError
from agent.fsutil import append_line, atomic_write, read_bytes

KEEP = 64
MAX_BYTES = 1_000_000
_ID = re.compile(r"^[0-9a-f]{8,64}$")
_AGENT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class GossipClaim:
    claim_id: str
    agent: str
    fence: int
    lost: bool = False

    def reseed_value(self) -> str:
        """The claim as Redis will hold it again: the same holder and fence (so the holder
        can still release a token it never sent), never claimable by anyone else."""
        return f"{self.agent}|{self.fence}|0|{'lost' if self.lost else 'reseed'}"


class Gossip:
    def __init__(self, path: Path, keep: int = KEEP) -> None:
        self.path = path
        self.keep = keep

    def claimed(self, claim_id: str, agent: str, fence: int, now: float) -> None:
        self._append(f"C {claim_id} {agent} {fence} {now:.3f}")

    def lost(self, claim_id: str, agent: str, fence: int) -> None:
        self._append(f"L {claim_id} {agent} {fence}")

    def released(self, claim_id: str, agent: str) -> None:
        self._append(f"R {claim_id} {agent}")

    def claims(self) -> list[GossipClaim]:
        """The live claims, oldest first, at most ``keep``."""
        return list(self._live().values())[-self.keep:]

    def _live(self) -> dict[str, GossipClaim]:
        live: dict[str, GossipClaim] = {}
        for line in self._lines():
            _apply(live, line.split())
        return live

    def _lines(self) -> list[str]:
        try:
            raw = read_bytes(self.path, MAX_BYTES)
        except StoreError:
            return []
        return raw.decode(errors="replace").splitlines() if raw else []

    def _append(self, line: str) -> None:
        size = append_line(self.path, line)
        if size > self.keep * 4 * 80:
            self._compact()

    def _compact(self) -> None:
        # Only this member's main loop appends, so a rewrite loses no concurrent line.
        text = "".join(f"{'L' if c.lost else 'C'} {c.claim_id} {c.agent} {c.fence} 0\n"
                       for c in self.claims())
        atomic_write(self.path, text.encode())


def _apply(live: dict[str, GossipClaim], parts: list[str]) -> None:
    if len(parts) < 3 or parts[0] not in ("C", "L", "R") or not _ID.match(parts[1]) \
            or not _AGENT.match(parts[2]):
        return  # a damaged line names no claim
    mark, claim_id, agent = parts[0], parts[1], parts[2]
    if mark == "R":
        held = live.get(claim_id)
        if held is not None and held.agent == agent and not held.lost:
            del live[claim_id]
        return
    fence = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
    held = live.pop(claim_id, None)
    if held is not None and held.lost:
        live[claim_id] = held  # lost is final: the token may be spent
        return
    live[claim_id] = GossipClaim(claim_id, agent, fence, lost=mark == "L")
