"""What securityd checks before it decrypts, changes or unlocks, and the dialogs it shows.

Every caller here is ``/usr/bin/security``: partition ``apple-tool:``, path ``/usr/bin/security``.
A decrypt passes three gates in turn [Apple securityd]:

1. the keychain is unlocked (``KeychainDatabase::makeUnlocked``; it asks for the password);
2. the item's decrypt entry trusts the caller, or any application (the ACL's prompt subject
   asks "allow?", ``acl_keychain.cpp``);
3. the partition list holds the caller's id (``SecurityServerAcl::validatePartition``; on a
   read it asks for the keychain password, ``extendPartition``).

A gate that would ask fails with errSecInteractionNotAllowed when the session has no UI (SSH,
launchd). A change or a delete checks the partition list too, but securityd offers no dialog
for those: a mismatch is CSSM_ERRCODE_OPERATION_AUTH_DENIED, which the client maps to
errSecAuthFailed (``acls.cpp`` ``readOperation``; ``SecBase.cpp``). Whether a foreign item's
change or delete is refused at all is configured (``foreign_write``, ``foreign_delete``).

With a UI each dialog is recorded; nobody answers unless ``dialog_answer`` says so: the call
blocks ``dialog_s`` and gets errSecUserCanceled [inferred: what Cancel returns].
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.sim._security import oserr
from agent.sim._security.state import SECURITY_TOOL, TOOL_PARTITION, Record, State


@dataclass(frozen=True)
class Gate:
    op: str  # the dialog's name in dialogs(): unlock, access, partition, change-acl
    asks: bool  # securityd offers a dialog for it (else it fails at once)
    refused: int  # the status when it cannot, or may not, ask


@dataclass(frozen=True)
class Outcome:
    status: int
    wait_s: float = 0.0  # block this long outside the lock, then errSecUserCanceled

    def settle(self) -> int:
        if self.wait_s > 0:
            time.sleep(self.wait_s)
        return self.status


UNLOCK = Gate("unlock", True, oserr.ERR_INTERACTION_NOT_ALLOWED)
ACCESS = Gate("access", True, oserr.ERR_INTERACTION_NOT_ALLOWED)
PARTITION_READ = Gate("partition", True, oserr.ERR_INTERACTION_NOT_ALLOWED)
PARTITION_CHANGE = Gate("partition", False, oserr.ERR_AUTH_FAILED)
CHANGE_ACL = Gate("change-acl", True, oserr.ERR_INTERACTION_NOT_ALLOWED)


def trusts_tool(record: Record) -> bool:
    return record.apps is None or SECURITY_TOOL in record.apps


def unlock_gates(state: State) -> list[Gate]:
    return [UNLOCK] if state.config.locked else []


def read_gates(state: State, record: Record) -> list[Gate]:
    gates = unlock_gates(state)
    if not trusts_tool(record):
        gates.append(ACCESS)
    if TOOL_PARTITION not in record.partitions:
        gates.append(PARTITION_READ)
    return gates


def change_gates(state: State, record: Record, policy: str) -> list[Gate]:
    """For a write (``policy`` = foreign_write) or a delete (foreign_delete)."""
    gates = unlock_gates(state)
    if TOOL_PARTITION not in record.partitions and policy == "deny":
        gates.append(PARTITION_CHANGE)
    return gates


def acl_change_gates(state: State) -> list[Gate]:
    # SecKeychainItemSetAccess "will prompt" [Apple keychain_add.c], -A prompts [seen: notes,
    # AntigravityManager PR #309]
    return [*unlock_gates(state), CHANGE_ACL]


def evaluate(state: State, gates: list[Gate], record: Record | None) -> Outcome:
    """Pass ``gates`` in order inside a transaction; dialogs and grants land in ``state``."""
    config = state.config
    service, account = (record.service, record.account) if record else ("", "")
    for gate in gates:
        if not gate.asks or not config.ui:
            return Outcome(gate.refused)
        state.add_dialog(gate.op, service, account)
        answer = config.dialog_answer
        if answer == "none":
            return Outcome(oserr.ERR_USER_CANCELED, config.dialog_s)
        if answer == "deny":
            # Cancel on the unlock sheet; Deny on an ACL question fails the validation
            return Outcome(oserr.ERR_USER_CANCELED if gate is UNLOCK else oserr.ERR_AUTH_FAILED)
        _grant(state, gate, record, always=answer == "always")
    return Outcome(oserr.NO_ERR)


def _grant(state: State, gate: Gate, record: Record | None, *, always: bool) -> None:
    if gate is UNLOCK:
        state.config.locked = False  # the user typed the keychain password
        return
    if not always or record is None:
        return
    # "Always Allow" adds the caller to the ACL and its partition id to the list
    # [Apple acl_keychain.cpp validates(), acls.cpp extendPartition]
    if gate is ACCESS and record.apps is not None and SECURITY_TOOL not in record.apps:
        record.apps.append(SECURITY_TOOL)
    if gate in (ACCESS, PARTITION_READ) and TOOL_PARTITION not in record.partitions:
        record.partitions.append(TOOL_PARTITION)
