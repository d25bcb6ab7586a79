"""Whether Claude Code 2.1.332 keeps a config dir's login in Windows Credential Manager, and
under which names, by the CLI's own rules (read from the win32-x64 build; README, "Windows";
line numbers are of ``strings -n 8 claude.exe``).

- In use when the session has ``CLAUDE_CODE_FORCE_WINDOWS_CREDMAN`` exactly ``"1"``; else when
  the cached feature ``tengu_windows_credman`` is ``true`` in the CLI's global config: the
  first of ``<config dir>/.config.json`` (legacy; skipped when missing or empty) and
  ``<CLAUDE_CONFIG_DIR or home>/.claude<suffix>.json``, under ``cachedGrowthBookFeatures``, or
  ``cachedFeatureFlags`` when that key is absent. Any failure to read or parse: not in use.
  The CLI decides once, at start-up, per process (line 592475 ``yWr``/``de``/``Oe``; line
  592465 ``aW``; line 592057 ``RD`` for the suffix).
- Items: ``Bun.secrets`` service ``Claude Code`` + suffix + ``-credentials`` + hash (the
  macOS service rules, ``agent.stores.macos.identity.service_name``), name ``claude-code-user``
  always (the Windows build has no ``$USER`` account). Bun's TargetName is ``service/name``;
  chunks, their count and the write marker are the names ``claude-code-user#<i>``, ``#m``,
  ``#p`` (line 592444 ``hRe``/``U7``, line 592460 ``H7``, line 592475 ``x``).
- Storage dir (``.storage-write.lock``, the fallback ``.credentials.json``): as on macOS.

Pure: the environment comes in as a mapping, files through a reader function.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.stores.macos.identity import ClaudeEnv, IdentityError, service_name, storage_dir

ACCOUNT = "claude-code-user"
FORCE_ENV = "CLAUDE_CODE_FORCE_WINDOWS_CREDMAN"
FLAG = "tengu_windows_credman"
FEATURE_KEYS = ("cachedGrowthBookFeatures", "cachedFeatureFlags")
LEGACY_CONFIG = ".config.json"
META, PENDING = "m", "p"
# Windows' limit for a generic credential's TargetName (CRED_MAX_GENERIC_TARGET_NAME_LENGTH).
MAX_TARGET_CHARS = 32767

Reader = Callable[[Path], str]  # the file's text; OSError as open() raises it


@dataclass(frozen=True)
class CredmanIdentity:
    service: str
    storage_dir: Path
    account: str = ACCOUNT

    @property
    def target(self) -> str:
        """The TargetName of the main item (Bun: ``service/name``)."""
        return f"{self.service}/{self.account}"

    def part(self, which: int | str) -> tuple[str, str]:
        """(TargetName, UserName) of a chunk (``0``, ``1``...), the count ``m`` or the marker
        ``p``: the CLI names them ``<name>#<which>`` under the same service."""
        name = f"{self.account}#{which}"
        return f"{self.service}/{name}", name

    @property
    def prefix(self) -> str:
        """Every item of this login starts with this (CredEnumerateW filter ``prefix*``)."""
        return self.target


def identity(env: ClaudeEnv, home: Path) -> CredmanIdentity:
    found = CredmanIdentity(service_name(env), storage_dir(env, home))
    if len(found.part(999)[0]) > MAX_TARGET_CHARS or "\x00" in found.target:
        raise IdentityError(f"the Credential Manager target for service {found.service!r} is "
                            "not a name Windows takes")
    return found


def config_file_suffix(env: ClaudeEnv) -> str:
    # The CLI's global config file name follows its OAuth environment; only the custom
    # endpoint is reachable for a user (local and staging are builds of Anthropic's own).
    return "-custom-oauth" if env.custom_oauth_url else ""


def global_config_paths(env: ClaudeEnv, home: Path) -> tuple[Path, Path]:
    """(legacy, current) global config files, in the order the CLI tries them."""
    config_dir = Path(env.config_dir) if env.config_dir is not None else home / ".claude"
    base = Path(env.config_dir) if env.config_dir else home
    return (config_dir / LEGACY_CONFIG,
            base / f".claude{config_file_suffix(env)}.json")


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _missing(exc: OSError) -> bool:
    # ENOENT, ENOTDIR, EISDIR, ELOOP: the CLI goes on to the current file.
    return isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)) or \
        exc.errno == 40


def flag_from_config(env: ClaudeEnv, home: Path, read: Reader = _read_text) -> bool:
    """The cached ``tengu_windows_credman`` as the CLI reads it; False for any failure."""
    legacy, current = global_config_paths(env, home)
    try:
        text = ""
        try:
            text = read(legacy)
        except OSError as exc:
            if not _missing(exc):
                return False
        if text == "":
            text = read(current)
        obj: Any = json.loads(text)
    except (OSError, ValueError):
        return False
    return _features(obj).get(FLAG) is True


def _features(obj: Any) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        return {}  # JSON null throws in the CLI: caught, not in use
    found = obj.get(FEATURE_KEYS[0])
    if found is None:
        found = obj.get(FEATURE_KEYS[1])
    return found if isinstance(found, dict) else {}


def credman_in_use(env: ClaudeEnv, force: str | None, home: Path,
                   read: Reader = _read_text) -> bool:
    """Does a session started with ``env`` (and ``CLAUDE_CODE_FORCE_WINDOWS_CREDMAN=force``)
    keep its login in Credential Manager?"""
    return force == "1" or flag_from_config(env, home, read)


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class CredmanSwitch:
    """``credman_in_use`` for one config dir, asked again whenever the global config files
    change (the CLI re-caches the flag while credsync runs; sessions started after that use
    the new answer). The files are read only when their mtime or size moved."""

    def __init__(self, env: ClaudeEnv, force: str | None, home: Path,
                 read: Reader = _read_text,
                 signature: Callable[[Path], object] = _signature) -> None:
        self.env, self.force, self.home = env, force, home
        self._read, self._signature = read, signature
        self._paths = global_config_paths(env, home)
        self._seen: tuple[object, ...] | None = None
        self._answer = False

    def __call__(self) -> bool:
        if self.force == "1":
            return True
        now = tuple(self._signature(p) for p in self._paths)
        if now != self._seen:
            self._answer = flag_from_config(self.env, self.home, self._read)
            self._seen = now
        return self._answer
