"""add-generic-password [Apple keychain_add.c, access_utils.c; libsecurity_keychain Item.cpp].

``-U`` first tries to modify the item found by account and service. **Any** failure of that
(item absent, keychain locked, access refused) falls through to creating a new item, which for an
existing item fails with errSecDuplicateItem: a refused ``-U`` exits 45, after both messages.
A modify with new data deletes the record and inserts a new one: the old ACL's applications are
kept, the partition list is re-stamped to the writer (``apple-tool:``, ``apple:``), ``cdat`` is
kept, ``mdat`` is now, and the item moves last in search order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.sim._security import access, oserr
from agent.sim._security.console import Tool, raw
from agent.sim._security.getopt import GetOpt
from agent.sim._security.search import find_first, fourcharcode, is_login
from agent.sim._security.state import (
    SECURITY_TOOL,
    TOOL_PARTITION,
    TOOL_PARTITIONS,
    Record,
    State,
)

_ATTR_OPTIONS = {"D": "desc", "G": "gena", "j": "icmt"}


@dataclass
class Request:
    account: str | None = None
    service: str | None = None
    label: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    secret: bytes | None = None  # None: not given (an update keeps the data)
    update: bool = False
    access_given: bool = False
    allow_any: bool = False
    trusted: list[str] = field(default_factory=list)
    keychain: str | None = None

    def apps(self) -> list[str] | None:
        """The decrypt entry of a new ACL (``create_access``): None for ``-A``."""
        if not self.access_given:
            return [SECURITY_TOOL]  # the creating application is trusted by default
        return None if self.allow_any else list(self.trusted)


def convert_hex(text: str) -> bytes | None:
    """``convertHex``: either case, an odd count padded with a leading zero nibble."""
    digits = text if len(text) % 2 == 0 else "0" + text
    if any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    return bytes.fromhex(digits)


def add_generic_password(tool: Tool, argv: Sequence[str]) -> int:
    request = _parse(tool, argv)
    if isinstance(request, int):
        return request
    return _add(tool, request)


def _parse(tool: Tool, argv: Sequence[str]) -> Request | int:
    request = Request()
    parser = GetOpt(argv, ":a:c:C:D:G:j:l:s:p:w:X:UAT:h", tool.note_line)
    for letter, value in parser:
        result = _take(tool, request, letter, value, parser.optopt)
        if result is not None:
            return result
    operands = list(argv[parser.optind:])
    if request.account is None or request.service is None:
        return 2
    if len(operands) > 1 or (operands and not operands[0]):
        return 2
    request.keychain = operands[0] if operands else None
    if request.label is None:
        request.label = request.service
    return request


def _take(tool: Tool, request: Request, letter: str, value: str | None,
          optopt: str) -> int | None:
    """Apply one option; a result code ends the parse (2 prints the usage)."""
    if value is None and letter not in "UA":
        if letter == ":" and optopt in "pw":
            return _prompt_secret(tool, request)  # -w last: "Specify -w as the last option"
        return 2
    if letter == "a":
        request.account = value
    elif letter == "s":
        request.service = value
    elif letter in "cC":
        code = fourcharcode(tool, value or "")
        if code is None:
            return 1
        request.attrs["crtr" if letter == "c" else "type"] = code
    elif letter in _ATTR_OPTIONS:
        request.attrs[_ATTR_OPTIONS[letter]] = value or ""
    elif letter == "l":
        request.label = value
    elif letter in "pw":
        request.secret = raw(value or "")
    elif letter == "X":
        return _take_hex(tool, request, value or "")
    else:
        _take_access(request, letter, value)
    return None


def _take_hex(tool: Tool, request: Request, text: str) -> int | None:
    data = convert_hex(text)
    if data is None:
        tool.error("Unable to convert password data (-X must specify valid hex digits)")
        return 2
    request.secret = data
    return None


def _take_access(request: Request, letter: str, value: str | None) -> None:
    if letter == "U":
        request.update = True
    elif letter == "A":
        request.allow_any = request.access_given = True
    elif letter == "T":
        if value:  # -T "" trusts nobody: access given, no application added
            request.trusted.append(value)  # no SecTrustedApplicationCreateFromPath check here
        request.access_given = True


def _prompt_secret(tool: Tool, request: Request) -> int | None:
    for _attempt in range(3):
        first = tool.stdin.getpass("password data for new item: ", tool.err)
        again = tool.stdin.getpass("retype password for new item: ", tool.err)
        if first == again:
            request.secret = first
            return None
        tool.note("passwords don't match\n")
    return 1


def _add(tool: Tool, request: Request) -> int:
    if request.update:
        status = _update(tool, request)
        if status == oserr.NO_ERR:
            return status
    where = request.keychain or "<default>"
    status = _create(tool, request)
    if status:
        tool.error(f"SecKeychainItemCreateFromContent ({where}): {oserr.errstr(status)}")
    return status


def _create(tool: Tool, request: Request) -> int:
    with tool.store.transaction() as state:
        if request.keychain is not None and not is_login(state, request.keychain):
            return oserr.ERR_NO_SUCH_KEYCHAIN  # [inferred] a keychain file that is not there
        outcome = access.evaluate(state, access.unlock_gates(state), None)
        if outcome.status == oserr.NO_ERR:
            outcome = access.Outcome(_insert(state, request))
    return outcome.settle()


def _insert(state: State, request: Request) -> int:
    assert request.service is not None and request.account is not None
    if state.find(request.service, request.account) is not None:
        return oserr.ERR_DUPLICATE_ITEM
    now = int(state.now())
    state.insert(Record(request.service, request.account, request.secret or b"", now, now,
                        list(TOOL_PARTITIONS), request.apps(), TOOL_PARTITION,
                        request.label or request.service, dict(request.attrs)))
    return oserr.NO_ERR


def _update(tool: Tool, request: Request) -> int:
    modified = _modify(tool, request)
    if isinstance(modified, int):
        if modified != oserr.ERR_ITEM_NOT_FOUND:  # not found is silent [Apple]
            tool.perror("SecKeychainItemModifyContent", modified)
        return modified
    if not request.access_given:
        return oserr.NO_ERR
    status = _merge_access(tool, modified, request)
    if status:
        tool.perror("SecKeychainItemSetAccess", status)
    return status


def _modify(tool: Tool, request: Request) -> Record | int:
    """``SecKeychainItemModifyContent``: the modified record, or the failure."""
    with tool.store.transaction() as state:
        criteria = {"acct": request.account or "", "svce": request.service or ""}
        keychains = [request.keychain] if request.keychain is not None else []
        record = find_first(state, criteria, keychains)
        if record is None:
            return oserr.ERR_ITEM_NOT_FOUND
        gates = access.change_gates(state, record, state.config.foreign_write)
        outcome = access.evaluate(state, gates, record)
        if outcome.status == oserr.NO_ERR:
            _rewrite(state, record, request)
            return copy.deepcopy(record)
    return outcome.settle()


def _rewrite(state: State, record: Record, request: Request) -> None:
    record.attrs.update(request.attrs)
    record.label = request.label or record.label
    record.mdat = int(state.now())
    if request.secret is None:
        return  # attributes only: the same record and key group [inferred: partitions kept]
    record.secret = request.secret
    record.partitions = list(TOOL_PARTITIONS)
    record.creator = TOOL_PARTITION
    state.items.remove(record)
    state.insert(record)


def _merge_access(tool: Tool, record: Record, request: Request) -> int:
    """``merge_access``: the decrypt entry's applications, old ones first, then the new."""
    with tool.store.transaction() as state:
        current = state.by_rid(record.rid)
        if current is None:
            return oserr.ERR_INVALID_ITEM_REF
        outcome = access.evaluate(state, access.acl_change_gates(state), current)
        if outcome.status == oserr.NO_ERR:
            current.apps = _merged(current.apps, request.apps())
    return outcome.settle()


def _merged(old: list[str] | None, new: list[str] | None) -> list[str] | None:
    # -A on an update adds no application and so leaves a restricted list as it was
    if old is None or new is None:
        return new if old is None else old
    return old + new
