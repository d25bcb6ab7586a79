"""Finding items as ``keychain_find.c`` does, and telling which keychain a name means."""

from __future__ import annotations

from collections.abc import Sequence

from agent.sim._security.console import Tool, raw
from agent.sim._security.getopt import GetOpt
from agent.sim._security.state import Record, State

# The match options every item command shares, and the attribute each one matches
MATCH_OPTIONS = {"a": "acct", "s": "svce", "c": "crtr", "C": "type", "D": "desc", "G": "gena",
                 "j": "icmt", "l": "labl"}


def value_of(record: Record, tag: str) -> str | None:
    own = {"acct": record.account, "svce": record.service, "labl": record.label}
    return own[tag] if tag in own else record.attrs.get(tag)


def _matches(record: Record, criteria: dict[str, str]) -> bool:
    return all(value_of(record, tag) == value for tag, value in criteria.items())


def is_login(state: State, name: str) -> bool:
    # A relative name is looked up in ~/Library/Keychains; "login.keychain" is upgraded to the
    # -db file [inferred from SecKeychainOpen]. Any other keychain holds nothing here.
    path = name if name.startswith("/") else f"{state.home}/Library/Keychains/{name}"
    return path in (state.keychain_path, state.keychain_path.removesuffix("-db"))


def searches_login(state: State, keychains: Sequence[str]) -> bool:
    return not keychains or any(is_login(state, name) for name in keychains)


def find_first(state: State, criteria: dict[str, str], keychains: Sequence[str]) -> Record | None:
    """``find_first_generic_password``: with account and service (the primary key) given, the
    other criteria are ignored; the first match in record order [Apple keychain_find.c]."""
    if not searches_login(state, keychains):
        return None
    if "acct" in criteria and "svce" in criteria:
        criteria = {"acct": criteria["acct"], "svce": criteria["svce"]}
    return next((r for r in state.items if _matches(r, criteria)), None)


def find_all(state: State, criteria: dict[str, str], keychains: Sequence[str]) -> list[Record]:
    """``SecItemCopyMatching`` with kSecMatchLimitAll: every criterion counts."""
    if not searches_login(state, keychains):
        return []
    return [r for r in state.items if _matches(r, criteria)]


def fourcharcode(tool: Tool, name: str) -> str | None:
    """``parse_fourcharcode``: exactly 4 bytes, else its message (and None)."""
    size = len(raw(name))
    if size == 4:
        return name
    tool.note("Error: four-character types must be exactly 4 characters long.\n")
    if size == 3:
        tool.note(f'(Try "{name} " instead of "{name}")\n')
    return None


def parse_search(tool: Tool, argv: Sequence[str], optstring: str,
                 flags: str) -> tuple[dict[str, str], set[str], list[str]] | int:
    """Options of find/delete: criteria, the flag letters seen, operands; or the result code
    (2: usage, 1: a bad four-character code) [Apple keychain_find.c]."""
    criteria: dict[str, str] = {}
    seen: set[str] = set()
    parser = GetOpt(argv, optstring, tool.note_line)
    for letter, value in parser:
        if letter in flags:
            seen.add(letter)
        elif letter in MATCH_OPTIONS and value is not None:
            if letter in "cC" and fourcharcode(tool, value) is None:
                return 1
            criteria[MATCH_OPTIONS[letter]] = value
        else:
            return 2  # -h, an unknown letter or a missing argument: the usage message
    return criteria, seen, list(argv[parser.optind:])
