"""One login shared by several machines, coordinated through Redis.

Modules: ``urls`` (which Redis URLs are accepted), ``envelope`` (keys, claim ids, sealed
state), ``invite`` (join codes), ``keystore`` (the cluster key and the Redis password on this
machine), ``membership`` (what is recorded in the state dir), ``gossip`` (claims heard of),
``scripts`` (the Lua steps), ``redisio`` (the only importer of redis), ``state`` (snapshots and
events), ``client`` (one member's protocol calls), ``subscriber`` (events on a thread of their
own), ``admin`` (building it all from the settings; the ``credsync cluster`` operations).

Importing this package does not import redis: the agent pays for it only when a cluster is
configured.
"""

from __future__ import annotations

__all__ = [
    "ClaimKind",
    "ClaimResult",
    "ClusterAdmin",
    "ClusterClient",
    "PublishKind",
    "PublishResult",
    "Snapshot",
    "Subscriber",
    "SyncResult",
]

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.cluster.admin import ClusterAdmin
    from agent.cluster.client import (
        ClaimKind,
        ClaimResult,
        ClusterClient,
        PublishKind,
        PublishResult,
        SyncResult,
    )
    from agent.cluster.state import Snapshot
    from agent.cluster.subscriber import Subscriber

_WHERE = {"ClusterAdmin": "admin", "ClusterClient": "client", "ClaimKind": "client",
          "ClaimResult": "client", "PublishKind": "client", "PublishResult": "client",
          "SyncResult": "client", "Snapshot": "state", "Subscriber": "subscriber"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"agent.cluster.{_WHERE[name]}"), name)
