"""Validated settings, remembered: ``credsync token`` starts without pydantic.

Every session may run ``credsync token``, so its start-up matters; importing pydantic and
pydantic-settings alone takes several times the interpreter's own start. Whenever
``agent.config.load_settings`` has validated the settings, it stores them here (``store``),
keyed by everything the result depends on: the config file's path and exact content, every
``CREDSYNC_*`` variable, the variables the defaults and ``~``/``$VAR`` expansion read (those named
in the file or in a ``CREDSYNC_*`` value included), the platform, and the code that validates.
``load`` returns the same settings as a plain attribute tree when every input is unchanged, and
None otherwise (the caller then validates the usual way, which stores a fresh entry).

The entry lives in the user cache dir (0700), one file (0600), last validation wins. It holds
settings, never a token. Any problem reading or writing it is ignored: it is only a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import paths

__all__ = ["SettingsView", "cache_file", "config_path", "inputs", "load", "path_fields", "store"]

VERSION = 1
MAX_CACHE_BYTES = 1_000_000
# Read by platformdirs, by ``~`` expansion and by the defaults of [agent] and [claude].
ENV_NAMES = frozenset({"HOME", "USER", "USERNAME", "LOGNAME", "USERPROFILE", "HOMEDRIVE",
                       "HOMEPATH", "APPDATA", "LOCALAPPDATA", "CLAUDE_CONFIG_DIR",
                       "CLAUDE_SECURESTORAGE_CONFIG_DIR"})
ENV_PREFIXES = ("XDG_", "CREDSYNC_")
# ``$NAME``, ``${NAME}`` (os.path.expandvars on POSIX) and ``%NAME%`` (on Windows).
_VAR_REF = re.compile(r"\$(\w+)|\$\{([^}]*)\}|%([^%]+)%")
# The modules whose code decides the result: a change to them (an upgrade) invalidates.
_CODE = ("config.py", "paths.py", "settings_cache.py")


def config_path(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """The config file: ``--config``, else ``$CREDSYNC_CONFIG``, else the user config dir."""
    env = os.environ if env is None else env
    if explicit is not None:
        return paths.expand(explicit)
    if env.get("CREDSYNC_CONFIG"):
        return paths.expand(env["CREDSYNC_CONFIG"])
    return paths.default_config_file()


def cache_file() -> Path:
    import platformdirs

    return platformdirs.user_cache_path(paths.APP, appauthor=False) / "settings.json"


def _code_signature() -> list[list[int]]:
    here = Path(__file__).resolve().parent
    out = []
    for name in _CODE:
        try:
            st = os.stat(here / name)
            out.append([st.st_mtime_ns, st.st_size])
        except OSError:
            out.append([])
    return out


def _relevant_env(text: str, env: Mapping[str, str]) -> dict[str, str | None]:
    names = {n for n in env if n in ENV_NAMES or n.upper().startswith(ENV_PREFIXES)}
    referenced = text + "".join(env[n] for n in names if n.upper().startswith("CREDSYNC_"))
    for m in _VAR_REF.finditer(referenced):
        names.add(next(g for g in m.groups() if g is not None))
    names |= ENV_NAMES
    return {n: env.get(n) for n in sorted(names)}


def inputs(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Everything validation reads for ``path``; None when the file cannot be read now."""
    env = os.environ if env is None else env
    try:
        raw: bytes | None = path.read_bytes() if path.is_file() else None
    except OSError:
        return None
    text = raw.decode("utf-8", "replace") if raw is not None else ""
    return {"version": VERSION, "path": str(path), "platform": sys.platform,
            "config": hashlib.sha256(raw).hexdigest() if raw is not None else None,
            "env": _relevant_env(text, env), "code": _code_signature()}


class SettingsView:
    """Validated settings as plain attributes (sections nested, lists kept, paths as Path)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        for key, value in data.items():
            setattr(self, key, _wrap(value))

    def __getattr__(self, name: str) -> Any:  # only reached for a name that is not there
        raise AttributeError(name)


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return SettingsView(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _to_paths(obj: Any, parts: list[str]) -> Any:
    """Turn the strings at a field path such as ``sinks[].path`` back into Path objects."""
    if not parts:
        return Path(obj) if isinstance(obj, str) else obj
    head, rest = parts[0], parts[1:]
    if head == "[]":
        return [_to_paths(v, rest) for v in obj] if isinstance(obj, list) else obj
    if isinstance(obj, dict) and head in obj:
        obj[head] = _to_paths(obj[head], rest)
    return obj


def _split(field: str) -> list[str]:
    return [p for p in re.split(r"\.|(\[\])", field) if p]


def load(explicit: Path | None) -> SettingsView | None:
    """The settings validated earlier for exactly these inputs, or None."""
    try:
        path = config_path(explicit)
        if explicit is not None and not path.is_file():
            return None  # the full path reports it
        wanted = inputs(path)
        with open(cache_file(), "rb") as fh:
            entry = json.loads(fh.read(MAX_CACHE_BYTES + 1))
        if not isinstance(entry, dict) or wanted is None or entry.get("inputs") != wanted:
            return None
        data = entry["settings"]
        for field in entry["paths"]:
            data = _to_paths(data, _split(field))
        return SettingsView(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def path_fields(model: type[Any], prefix: str = "") -> list[str]:
    """The fields of a pydantic model class (nested) that hold paths: ``agent.state_dir``,
    ``claude.config_dirs[]``, ``sinks[].path``."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        out += _annotation_paths(info.annotation, f"{prefix}{name}")
    return out


def _annotation_paths(annotation: Any, where: str) -> list[str]:
    if annotation is Path:
        return [where]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return sorted({p for a in args if a is not type(None)
                       for p in _annotation_paths(a, where)})
    if origin is list and args:
        return _annotation_paths(args[0], f"{where}[]")
    if hasattr(annotation, "model_fields"):
        return path_fields(annotation, f"{where}.")
    return []


def store(path: Path, settings: Any, env: Mapping[str, str] | None = None) -> None:
    """Remember ``settings`` (a validated pydantic Settings) for the inputs of ``path``."""
    try:
        wanted = inputs(path, env)
        if wanted is None:
            return
        entry = {"inputs": wanted, "settings": settings.model_dump(mode="json"),
                 "paths": path_fields(type(settings))}
        data = json.dumps(entry, sort_keys=True).encode()
        target = cache_file()
        try:
            if target.read_bytes() == data:
                return
        except OSError:
            pass
        from agent.fsutil import atomic_write, ensure_private_dir

        ensure_private_dir(target.parent)
        atomic_write(target, data)
    except Exception:  # a cache that cannot be written is no error
        return
