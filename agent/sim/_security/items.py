"""find-generic-password, delete-generic-password, dump-keychain [Apple keychain_find.c]."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence

from agent.sim._security import access, oserr, render
from agent.sim._security.console import Tool
from agent.sim._security.getopt import GetOpt
from agent.sim._security.search import find_first, parse_search, searches_login
from agent.sim._security.state import Record


def password_stdout(secret: bytes) -> bytes:
    """``-w``: the bytes, or lower-case hex when any is not ``isprint`` in the C locale (security
    never calls setlocale), then a newline [Apple keychain_find.c do_password_item_printing]."""
    if all(0x20 <= ch <= 0x7E for ch in secret):
        return secret + b"\n"
    return secret.hex().encode() + b"\n"


def find_generic_password(tool: Tool, argv: Sequence[str]) -> int:
    parsed = parse_search(tool, argv, "ha:c:C:D:G:j:l:s:wg", "wg")
    if isinstance(parsed, int):
        return parsed
    criteria, flags, keychains = parsed
    if not flags:
        return _print_attributes(tool, criteria, keychains)
    found = _find_and_decrypt(tool, criteria, keychains)
    if found is None:
        tool.perror("SecKeychainSearchCopyNext", oserr.ERR_ITEM_NOT_FOUND)
        return oserr.ERR_ITEM_NOT_FOUND
    record, outcome, keychain_path = found
    status = outcome.settle()
    if status:
        return status  # SecKeychainItemCopyContent failed: nothing printed at all [Apple]
    if "w" in flags:
        tool.out.write(password_stdout(record.secret))
    else:
        tool.out.write(render.attributes(record, keychain_path))
        tool.err.write(b"password: " + render.print_buffer(record.secret) + b"\n")
    return oserr.NO_ERR


def _find_and_decrypt(tool: Tool, criteria: dict[str, str],
                      keychains: list[str]) -> tuple[Record, access.Outcome, str] | None:
    """The item found and what its decrypt met, from one look at the keychain."""
    with tool.store.transaction() as state:
        record = find_first(state, criteria, keychains)
        if record is None:
            return None
        state.count_decrypt(record)
        outcome = access.evaluate(state, access.read_gates(state, record), record)
        return copy.deepcopy(record), outcome, state.keychain_path


def _print_attributes(tool: Tool, criteria: dict[str, str], keychains: list[str]) -> int:
    # Attributes live unencrypted in the database: no decrypt, no prompt, locked or not
    # [inferred: Keychain Access lists a locked keychain's items].
    state = tool.store.read()
    record = find_first(state, criteria, keychains)
    if record is None:
        tool.perror("SecKeychainSearchCopyNext", oserr.ERR_ITEM_NOT_FOUND)
        return oserr.ERR_ITEM_NOT_FOUND
    tool.out.write(render.attributes(record, state.keychain_path))
    return oserr.NO_ERR


def delete_generic_password(tool: Tool, argv: Sequence[str]) -> int:
    parsed = parse_search(tool, argv, "ha:c:C:D:G:j:l:s:g", "")
    if isinstance(parsed, int):
        return parsed
    criteria, _flags, keychains = parsed
    if not criteria:
        return 2
    state = tool.store.read()
    record = find_first(state, criteria, keychains)
    if record is None:
        tool.perror("SecKeychainSearchCopyNext", oserr.ERR_ITEM_NOT_FOUND)
        return oserr.ERR_ITEM_NOT_FOUND
    tool.out.write(render.attributes(record, state.keychain_path))
    tool.out.flush()
    status = _delete(tool, record.rid)
    tool.note("password has been deleted.\n")  # printed whatever the delete returned [Apple]
    return status


def _delete(tool: Tool, rid: int) -> int:
    with tool.store.transaction() as state:
        record = state.by_rid(rid)
        if record is None:
            return oserr.ERR_INVALID_ITEM_REF  # deleted or rewritten meanwhile
        gates = access.change_gates(state, record, state.config.foreign_delete)
        outcome = access.evaluate(state, gates, record)
        if outcome.status == oserr.NO_ERR:
            state.items.remove(record)
    return outcome.settle()


def dump_keychain(tool: Tool, argv: Sequence[str]) -> int:
    show: set[str] = set()
    output: str | None = None
    parser = GetOpt(argv, "adhiro:", tool.note_line)
    for letter, value in parser:
        if letter in "adir":
            show.update("ai" if letter == "i" else letter)
        elif letter == "o":
            output = value
        else:
            return 2
    keychains = list(argv[parser.optind:])
    state = tool.store.read()
    records = state.items if searches_login(state, keychains) else []
    stream = open(output, "wb") if output else tool.out  # noqa: SIM115 (closed below)
    try:
        for record in records:
            stream.write(_dump_item(tool, record, state.keychain_path, show))
            stream.flush()
    finally:
        if output:
            stream.close()
    return oserr.NO_ERR  # a failing item is reported and skipped, not the command's result


def _dump_item(tool: Tool, record: Record, keychain_path: str, show: set[str]) -> bytes:
    """``print_keychain_item_attributes`` with data, raw data and ACL as asked."""
    head = render.attributes(record, keychain_path)
    header, _, lines = head.partition(b"attributes:\n")
    out = header + b"attributes:\n"
    if "d" in show:
        status, found = _decrypt(tool, record.rid)
        if found is None:
            tool.perror("SecKeychainItemCopyAttributesAndData", status)
            return out  # nothing more of this item [Apple: goto loser]
        record = found
    out += lines
    if "d" in show:
        out += b"data:\n" + render.print_buffer(record.secret) + b"\n"
    if "r" in show:
        # [inferred] stands in for the ciphertext: as long as a blob, no part of the secret
        blob = hashlib.sha256(record.secret + record.account.encode()).digest() * 2
        out += b"raw data:\n" + render.print_buffer(blob) + b"\n"
    if "a" in show:
        status = _unlock_for_acl(tool, record)
        if status:
            tool.perror("SecKeychainItemCopyAccess", status)
            return out
        out += render.access(record)
        if "i" in show:
            _ask_acl_questions(tool)
    return out


def _decrypt(tool: Tool, rid: int) -> tuple[int, Record | None]:
    with tool.store.transaction() as state:
        record = state.by_rid(rid)
        if record is None:
            return oserr.ERR_INVALID_ITEM_REF, None
        state.count_decrypt(record)
        outcome = access.evaluate(state, access.read_gates(state, record), record)
        found = copy.deepcopy(record)
    status = outcome.settle()
    return status, (found if status == oserr.NO_ERR else None)


def _unlock_for_acl(tool: Tool, record: Record) -> int:
    # Reading a key's ACL decodes its blob, which needs the keychain unlocked [Apple securityd
    # kckey.cpp instantiateAcl -> decodeKey -> makeUnlocked]
    with tool.store.transaction() as state:
        outcome = access.evaluate(state, access.unlock_gates(state), record)
    return outcome.settle()


def _ask_acl_questions(tool: Tool) -> None:
    # -i asks per entry and per item; answers are read (stdin stays in step) but the double
    # never edits an ACL this way [not emulated]
    for _entry in range(5):
        tool.note("Remove this acl? ")
        tool.stdin.readline(10)
    tool.note("Update access? ")
    tool.stdin.readline(10)
