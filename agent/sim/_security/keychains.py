"""Keychain-wide commands: show-keychain-info, lock, unlock, the keychain lists, and the
partition list [Apple keychain_show_info.c, keychain_lock.c, keychain_unlock.c, keychain_list.c,
keychain_find.c keychain_set_partition_list]."""

from __future__ import annotations

from collections.abc import Sequence

from agent.sim._security import access, oserr, render
from agent.sim._security.console import Tool, cooked
from agent.sim._security.getopt import GetOpt
from agent.sim._security.search import MATCH_OPTIONS, find_all, is_login
from agent.sim._security.state import State

SYSTEM_KEYCHAIN = "/Library/Keychains/System.keychain"
_DOMAINS = ("user", "system", "common", "dynamic")


def _one_keychain(argv: Sequence[str], optind: int) -> str | int | None:
    """The optional single keychain operand; 2 for an empty one or more than one."""
    operands = argv[optind:]
    if len(operands) > 1 or (operands and not operands[0]):
        return 2
    return operands[0] if operands else None


def show_keychain_info(tool: Tool, argv: Sequence[str]) -> int:
    parser = GetOpt(argv, "s", tool.note_line)
    salt = False
    for letter, _value in parser:
        if letter != "s":
            return 2
        salt = True
    name = _one_keychain(argv, parser.optind)
    if isinstance(name, int):
        return name
    shown = name if name is not None else "<NULL>"
    with tool.store.transaction() as state:
        if name is not None and not is_login(state, name):
            outcome = access.Outcome(oserr.ERR_NO_SUCH_KEYCHAIN)  # [inferred]
        else:
            # SecKeychainCopySettings needs the keychain unlocked [Apple securityd
            # KeychainDatabase::getParameters -> makeUnlocked]; 36 without UI [seen: GCM PR #26]
            outcome = access.evaluate(state, access.unlock_gates(state), None)
    status = outcome.settle()
    if status:
        tool.error(f"SecKeychainCopySettings {shown}: {oserr.errstr(status)}")
        return status
    # The login keychain's defaults: no lock on sleep, no timeout [inferred]
    tool.note(f'Keychain "{shown}" no-timeout' + (f" salt={'00' * 20}" if salt else "") + "\n")
    return oserr.NO_ERR


def lock_keychain(tool: Tool, argv: Sequence[str]) -> int:
    parser = GetOpt(argv, "ah", tool.note_line)
    lock_all = False
    for letter, _value in parser:
        if letter != "a":
            return 2
        lock_all = True
    operands = argv[parser.optind:]
    if (lock_all and operands) or len(operands) > 1:
        return 2
    if operands and not operands[0]:
        return 2
    with tool.store.transaction() as state:
        if operands and not is_login(state, operands[0]):
            tool.error(f"SecKeychainLock {operands[0]}: "
                       f"{oserr.errstr(oserr.ERR_NO_SUCH_KEYCHAIN)}")
            return oserr.ERR_NO_SUCH_KEYCHAIN
        state.config.locked = True
    return oserr.NO_ERR


def unlock_keychain(tool: Tool, argv: Sequence[str]) -> int:
    parser = GetOpt(argv, "hp:u", tool.note_line)
    password: str | None = None
    use_password = True
    for letter, value in parser:
        if letter == "p":
            password = value
        elif letter == "u":
            use_password = False
        else:
            return 2
    name = _one_keychain(argv, parser.optind)
    if isinstance(name, int):
        return name
    if password is None and use_password:
        password = cooked(tool.stdin.getpass(_unlock_prompt(name), tool.err))
    status = _unlock(tool, name, password if use_password else None)
    if status:
        tool.error(f"SecKeychainUnlock {name if name is not None else '<NULL>'}: "
                   f"{oserr.errstr(status)}")
    return status


def _unlock_prompt(name: str | None) -> str:
    return f"password to unlock {name if name is not None else 'default'}: "


def _unlock(tool: Tool, name: str | None, password: str | None) -> int:
    """``SecKeychainUnlock``: with a password it is checked even when already unlocked
    [inferred]; without one (``-u``) SecurityAgent asks, as for any locked access."""
    with tool.store.transaction() as state:
        if name is not None and not is_login(state, name):
            return oserr.ERR_NO_SUCH_KEYCHAIN
        if password is None:
            outcome = access.evaluate(state, access.unlock_gates(state), None)
        elif password == state.config.keychain_password:
            state.config.locked = False
            outcome = access.Outcome(oserr.NO_ERR)
        else:
            outcome = access.Outcome(oserr.ERR_AUTH_FAILED)
    return outcome.settle()


def set_generic_password_partition_list(tool: Tool, argv: Sequence[str]) -> int:
    criteria: dict[str, str] = {}
    partitions: str | None = None
    password: str | None = None
    parser = GetOpt(argv, ":a:c:C:D:G:j:l:s:S:k:", tool.note_line)
    for letter, value in parser:
        if letter in MATCH_OPTIONS and value is not None:
            criteria[MATCH_OPTIONS[letter]] = value  # no four-character check here [Apple]
        elif letter == "S":
            partitions = value
        elif letter == "k":
            password = value
        elif not (letter == ":" and parser.optopt == "k"):
            return 2  # (-k with no value: prompt below)
    name = _one_keychain(argv, parser.optind)
    if isinstance(name, int):
        return name
    if partitions is None:
        return 2
    if password is None:
        password = cooked(tool.stdin.getpass(_unlock_prompt(name), tool.err))
    return _set_partitions(tool, name, password, criteria, partitions.split(","))


def _set_partitions(tool: Tool, name: str | None, password: str, criteria: dict[str, str],
                    partitions: list[str]) -> int:
    with tool.store.transaction() as state:
        status = _check_password(state, name, password)
        if status:
            tool.perror("SecKeychainUnlock", status)
            return 1  # this command returns 1 for any failure, not the OSStatus [Apple]
        records = find_all(state, criteria, [name] if name is not None else [])
        if not records:
            tool.perror("SecItemCopyMatching", oserr.ERR_ITEM_NOT_FOUND)
            return 1
        for record in records:
            tool.out.write(render.attributes(record, state.keychain_path))
            # -S is split on commas and nothing else: "a, b" keeps the space [Apple]
            record.partitions = list(partitions)
    return oserr.NO_ERR


def _check_password(state: State, name: str | None, password: str) -> int:
    if name is not None and not is_login(state, name):
        return oserr.ERR_NO_SUCH_KEYCHAIN
    if password != state.config.keychain_password:
        return oserr.ERR_AUTH_FAILED
    state.config.locked = False  # SecKeychainUnlock with the password: unlocked from now on
    return oserr.NO_ERR


def _domain(tool: Tool, value: str) -> str | None:
    # parse_domain matches what was typed as a prefix of a domain name (so "" is "user")
    found = next((d for d in _DOMAINS if d.startswith(value)), None)
    if found is None:
        tool.error(f"Invalid domain: {value}")
    return found


def _keychain_display(tool: Tool, argv: Sequence[str], listing: bool) -> int:
    """list-keychains, default-keychain, login-keychain: display only (``-s`` not emulated)."""
    parser = GetOpt(argv, "d:hs", tool.note_line)
    domain: str | None = None
    for letter, value in parser:
        if letter == "d":
            domain = _domain(tool, value or "")
            if domain is None:
                return 2
        elif letter == "s":
            tool.error(f"{argv[0]} -s: not emulated by the test double")
            return 1
        else:
            return 2
    if argv[parser.optind:]:
        return 2
    state = tool.store.read()
    paths = {None: [state.keychain_path, SYSTEM_KEYCHAIN] if listing else [state.keychain_path],
             "user": [state.keychain_path], "system": [SYSTEM_KEYCHAIN]}.get(domain, [])
    if not paths and not listing:
        tool.out.write(b" <NULL>\n")  # display_list of no keychain [inferred]
    for path in paths:
        tool.out.write(f'    "{path}"\n'.encode())
    return oserr.NO_ERR


def list_keychains(tool: Tool, argv: Sequence[str]) -> int:
    return _keychain_display(tool, argv, listing=True)


def default_keychain(tool: Tool, argv: Sequence[str]) -> int:
    return _keychain_display(tool, argv, listing=False)


def login_keychain(tool: Tool, argv: Sequence[str]) -> int:
    return _keychain_display(tool, argv, listing=False)
