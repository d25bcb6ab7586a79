"""Which store holds each Codex home's login: ``cli_auth_credentials_store`` in
``$CODEX_HOME/config.toml`` (``../shared/notes/codex.md``).

- ``file`` (the default, also with no config.toml or no such key): ``auth.json``;
- ``keyring``: the keyring item only (Codex fails without a keyring, and so does the store);
- ``auto``: one store reading as Codex reads, the item when there is one, else the file
  (``agent.stores.codex_auto``); with credsync's keychain off, only the file (reported);
- ``ephemeral``: Codex keeps the login in memory; nothing to keep (reported).

Codex profiles, managed config and ``-c`` overrides can choose another mode than config.toml
says: ``modes`` overrides the mode per home (credsync's config supplies it).
"""

from __future__ import annotations

import enum
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.credential import redact
from agent.errors import ConfigError, StoreError
from agent.fsutil import read_bytes
from agent.stores.base import Store
from agent.stores.codex_auto import CodexAutoStore
from agent.stores.codex_file import CodexFileStore
from agent.stores.codex_keyring import CodexKeyringStore
from agent.stores.keychain import KeychainBackend, KeychainCalls

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

CONFIG_NAME = "config.toml"
MODE_KEY = "cli_auth_credentials_store"
MAX_CONFIG_BYTES = 1_000_000


class Mode(str, enum.Enum):
    FILE = "file"
    KEYRING = "keyring"
    AUTO = "auto"
    EPHEMERAL = "ephemeral"


MODES = ", ".join(m.value for m in Mode)


def parse_mode(value: object, where: str) -> Mode:
    """``value`` as a Mode; ConfigError naming ``where`` when it is not one."""
    if isinstance(value, str):
        for mode in Mode:
            if mode.value == value:
                return mode
    shown = repr(value) if isinstance(value, str) and len(value) < 40 else type(value).__name__
    raise ConfigError([f"{where}: {MODE_KEY} = {shown} is not one of {MODES}"])


def store_mode(home: Path) -> Mode:
    """The mode ``<home>/config.toml`` sets (``file`` when it sets none); ConfigError, naming
    the file, when it cannot be read or is not TOML."""
    path = home / CONFIG_NAME
    try:
        raw = read_bytes(path, MAX_CONFIG_BYTES)
    except StoreError as exc:  # not a regular file, permissions
        raise ConfigError([f"{path}: cannot be read ({exc}); Codex's config must be a "
                           "readable file"]) from exc
    if raw is None:
        return Mode.FILE
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: over {MAX_CONFIG_BYTES} bytes, too big for Codex's config"])
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {redact(str(exc))}; fix it (Codex "
                           "cannot read it either)"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})"]) from exc
    except RecursionError as exc:
        raise ConfigError([f"{path}: nested too deeply"]) from exc
    return parse_mode(document.get(MODE_KEY, Mode.FILE.value), str(path))


@dataclass(frozen=True)
class HomePlan:
    """What credsync keeps of one home: its mode, its stores (none: nothing kept) and why."""

    home: Path
    mode: Mode
    stores: tuple[Store, ...]
    note: str = ""


def plan_home(home: Path, mode: Mode, backend: KeychainBackend | None, keychain_enabled: bool,
              calls: KeychainCalls | None = None) -> HomePlan:
    keychain = backend if keychain_enabled else None
    if mode is Mode.FILE:
        return HomePlan(home, mode, (CodexFileStore(home),))
    if mode is Mode.EPHEMERAL:
        return HomePlan(home, mode, (), f"{MODE_KEY} = ephemeral: Codex keeps this login in "
                                        "memory only; there is nothing for credsync to keep")
    if keychain is None:
        if mode is Mode.KEYRING:
            return HomePlan(home, mode, (), f"{MODE_KEY} = keyring, but credsync's keychain is "
                                            "off or unavailable: this home is not kept")
        return HomePlan(home, mode, (CodexFileStore(home),),
                        f"{MODE_KEY} = auto, but credsync's keychain is off: only auth.json is "
                        "kept (a keyring item Codex made would be missed)")
    item = CodexKeyringStore(home, keychain, calls=calls)
    if mode is Mode.KEYRING:
        return HomePlan(home, mode, (item,))
    return HomePlan(home, mode, (CodexAutoStore(CodexFileStore(home), item),))


def plan_homes(homes: Sequence[Path], keychain_backend: KeychainBackend | None,
               keychain_enabled: bool, *, calls: KeychainCalls | None = None,
               modes: Mapping[Path, str] | None = None) -> list[HomePlan]:
    """Each home's plan; ConfigError (every problem, each naming its file) when a mode is
    unreadable. ``calls``: the keychain worker shared with other stores on the same backend
    (a ``SecretServiceKeyring`` takes one thread at a time)."""
    shared = calls if calls is not None or keychain_backend is None else KeychainCalls()
    plans: list[HomePlan] = []
    problems: list[str] = []
    for home in homes:
        try:
            given = (modes or {}).get(home)
            mode = parse_mode(given, f"the Codex store mode for {home}") if given is not None \
                else store_mode(home)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        plans.append(plan_home(home, mode, keychain_backend, keychain_enabled, shared))
    if problems:
        raise ConfigError(problems)
    return plans


def codex_stores(homes: Sequence[Path], keychain_backend: KeychainBackend | None,
                 keychain_enabled: bool, *, calls: KeychainCalls | None = None,
                 modes: Mapping[Path, str] | None = None) -> list[Store]:
    """The stores of every home's login, in the order of ``homes``; each home whose login is
    not kept is logged with why."""
    plans = plan_homes(homes, keychain_backend, keychain_enabled, calls=calls, modes=modes)
    for plan in plans:
        if plan.note:
            log.warning("Codex home %s: %s", plan.home, plan.note)
    return [store for plan in plans for store in plan.stores]
