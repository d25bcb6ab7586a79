"""The cluster's shared login as a store: a holder like the CLI's own files.

Reading gives the generation this machine holds (``ClusterNode.held``: adopted from Redis,
its expiry on this machine's clock); writing publishes a login made here as the next
generation. So the local winner rule sees the other machines' refreshes as one more store,
and a login made on this machine leaves it along the same write path as every other store.

A holder: the shared login lives while the cluster holds it, so a machine that never had a
login takes the cluster's, and a logout on one member does not end the others' login (leave
the cluster for that: ``credsync cluster leave``).
"""

from __future__ import annotations

from agent.cluster.node import ClusterNode, same_pair
from agent.credential import Credential, Reading, ReadState
from agent.errors import StoreError
from agent.stores.base import Role, Store


class ClusterStore(Store):
    kind = "cluster"
    role = Role.HOLDER

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.name = f"cluster:{node.login_id}"
        self.location = node.location

    def read(self) -> Reading:
        held = self.node.held
        if held is None:
            state = self.node.redis_state
            if state is not None and state.problem:
                return Reading(ReadState.ERROR, None, f"the state in Redis does not open "
                                                      f"({state.problem})")
            return Reading(ReadState.MISSING, None, "the cluster holds no login yet")
        return Reading(ReadState.VALID, held.credential, f"generation {held.gen}")

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        if cred.is_blank:
            raise StoreError("refusing to publish a blank credential to the cluster")
        held = self.node.held
        if held is not None and same_pair(held.credential, cred) and \
                self.node.redis_state is not None and \
                same_pair(self.node.redis_state.credential, cred):
            return False
        return self.node.publish_local(cred)
