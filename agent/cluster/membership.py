"""Where this machine's membership is recorded: the login's scope dir, not config.toml.

``cluster.json`` (written by ``cluster init`` / ``join``, removed by ``leave``) says which
cluster this login belongs to: login id, this member's id and name, the Redis URL (never a
password), the key id and where the key is kept. ``cluster-view.json`` is what this member has
seen of Redis (epoch, highest fence and version), to tell a Redis that lost or rolled back its
data. Both are state, not settings: membership is per login and per machine (a config.toml
copied between machines with dotfiles must not make two machines one member), and credsync
never rewrites the user's config file. The ``[cluster]`` table holds only tunables.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.cluster.urls import RedisTarget, parse_redis_url
from agent.errors import ClusterError, StoreError
from agent.fsutil import atomic_write, ensure_private_dir, read_bytes

MEMBERSHIP_FILE = "cluster.json"
VIEW_FILE = "cluster-view.json"
GOSSIP_FILE = "cluster-gossip"
KEY_FILE = "cluster.key"
MAX_BYTES = 100_000
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass(frozen=True)
class Membership:
    login_id: str
    member_id: str
    name: str
    redis_url: str
    kid: str
    key_store: str  # "keychain" | "file"
    joined_ms: int

    @property
    def prefix(self) -> str:
        """Every key of this login shares one hash tag (one slot on a Redis Cluster too)."""
        return f"cs:{{{self.login_id}}}:"

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def channel(self) -> str:
        return self.prefix + "ev"

    def target(self, source: str) -> RedisTarget:
        return parse_redis_url(self.redis_url, f"{source}: redis_url")


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = read_bytes(path, MAX_BYTES)
    except StoreError as exc:
        raise ClusterError(f"{exc}; fix or remove it") from exc
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise ClusterError(f"{path}: not JSON; remove it and run credsync cluster join "
                           "again") from exc
    if not isinstance(obj, dict):
        raise ClusterError(f"{path}: not a JSON object; remove it and join again")
    return obj


class MembershipFile:
    def __init__(self, scope_dir: Path) -> None:
        self.path = scope_dir / MEMBERSHIP_FILE

    def load(self) -> Membership | None:
        obj = _load_json(self.path)
        if obj is None:
            return None
        try:
            member = Membership(**{name: obj[name] for name in Membership.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise ClusterError(f"{self.path}: incomplete ({exc}); remove it and run credsync "
                               "cluster join again") from exc
        if not all(_HEX.match(str(v)) for v in (member.login_id, member.member_id, member.kid)) \
                or member.key_store not in ("keychain", "file"):
            raise ClusterError(f"{self.path}: damaged; remove it and run credsync cluster "
                               "join again")
        member.target(str(self.path))  # a hand-edited URL is checked like a typed one
        return member

    def save(self, member: Membership) -> None:
        ensure_private_dir(self.path.parent)
        atomic_write(self.path, json.dumps(asdict(member), indent=1, sort_keys=True).encode())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class View:
    """What this member last saw of Redis, for the epoch check."""

    epoch: str = ""
    max_fence: int = 0
    max_version: int = 0


class ViewFile:
    def __init__(self, scope_dir: Path) -> None:
        self.path = scope_dir / VIEW_FILE
        self._saved: View | None = None

    def load(self) -> View:
        try:
            obj = _load_json(self.path) or {}
        except ClusterError:
            obj = {}  # rebuilt from Redis; it never holds the only copy of anything
        view = View(str(obj.get("epoch", "")), _count(obj.get("max_fence")),
                    _count(obj.get("max_version")))
        self._saved = View(**asdict(view))
        return view

    def save(self, view: View) -> None:
        if view == self._saved:
            return
        ensure_private_dir(self.path.parent)
        atomic_write(self.path, json.dumps(asdict(view), sort_keys=True).encode())
        self._saved = View(**asdict(view))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
