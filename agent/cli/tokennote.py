"""The token note: ``credsync token`` answers in a few milliseconds when nothing changed.

Sessions run ``credsync token`` often (an API-key helper runs it per request), so its start-up is
most of its cost, and the interpreter's own start-up is most of what is left: importing pydantic,
click, pathlib or logging costs more than the work. So the full command, each time it hands out a
token that is valid and not due for a refresh, leaves a note (``remember``): which bytes it read
(the config file, every config dir's credential file, the state files that decide a refresh:
size and CRC-32 of each), the environment (keyed digests of its values) and code that shaped the
settings, which file held the token and where, and until when the answer holds (the refresh
deadline, never past expiry).

The next ``credsync token`` (``lookup``) reads the note and those files again and, when every
input is byte-for-byte what the full command decided on and the deadline has not come, prints the
token from the same bytes. Anything else (a changed or unreadable input, a damaged note, a newer
code version, a deadline reached) and the full command runs and decides, as before. The note
holds no token and no environment value (a CREDSYNC_* value may be a secret): sizes, checksums,
digests, paths and offsets only; it lives in the user cache dir, 0600.

This module imports only what ``json`` already brings in: the full command's imports are what the
note exists to avoid. The keychain is not an input: on Linux and Windows credsync's item is its
own copy, written from the files and the state dir (a change there shows up in them first); on
macOS the item is Claude Code's own store, so no note is left there while the keychain is on.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import zlib
from collections.abc import Mapping, Sequence

try:  # blake2 without hashlib, whose OpenSSL import costs more than the rest of the fast path
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - another interpreter
    from hashlib import blake2b

__all__ = ["Note", "lookup", "note_file", "read_input", "resolve_config"]

VERSION = 2  # 2: environment values are keyed digests, never the values
MAX_NOTE_BYTES = 1_000_000
MAX_INPUT_BYTES = 4_000_000  # the state dir's own limit
# What platformdirs and ``~`` expansion read, and the variables that name the config dirs.
ENV_NAMES = ("APPDATA", "CLAUDE_CONFIG_DIR", "CLAUDE_SECURESTORAGE_CONFIG_DIR", "CODEX_HOME",
             "HOME",
             "HOMEDRIVE", "HOMEPATH", "LOCALAPPDATA", "LOGNAME", "PYTHON_KEYRING_BACKEND",
             "USER", "USERNAME", "USERPROFILE")
ENV_PREFIXES = ("XDG_", "CREDSYNC_")
# The modules whose code decides the answer: an upgrade invalidates every note.
CODE = ("cli/tokennote.py", "config.py", "paths.py", "loop/runtime.py", "loop/build.py",
        "refresh/coordinator.py", "reconcile.py", "credential.py", "jsondoc.py", "ledger.py",
        "winner.py", "stores/claude_file.py")
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the agent package

Input = list[object]  # [path, size, crc32], or [path, None, None] for a file that is not there


# --- shared by both sides ----------------------------------------------------------------------

def note_file(env: Mapping[str, str], platform: str = sys.platform) -> str | None:
    """Where the note lives: the user cache dir (platformdirs' choice where that is simple to
    tell without importing it); None when it cannot be told cheaply (then no note is used)."""
    def absolute(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value if value and os.path.isabs(value) else None

    if platform == "win32":
        base = absolute("LOCALAPPDATA")
        return os.path.join(base, "credsync", "Cache", "token-note.json") if base else None
    home = absolute("HOME")
    default = os.path.join("Library", "Caches") if platform == "darwin" else ".cache"
    base = absolute("XDG_CACHE_HOME") or (os.path.join(home, default) if home else None)
    return os.path.join(base, "credsync", "token-note.json") if base else None


def resolve_config(given: str | None, env: Mapping[str, str]) -> list[object]:
    """How the config file is chosen: ``--config``, ``$CREDSYNC_CONFIG`` or the default (which
    then depends only on the environment compared separately)."""
    # As agent.config.config_path: ``--config`` literally but for ``~`` (the shell expanded any
    # ``$`` it meant); the variable with ``~`` and ``$VARS`` (the full command refuses an unset
    # one, so no note exists for it).
    if given is not None:
        return ["explicit", os.path.abspath(os.path.expanduser(given))]
    if env.get("CREDSYNC_CONFIG"):
        value = env["CREDSYNC_CONFIG"]
        return ["env", os.path.abspath(os.path.expanduser(os.path.expandvars(value)))]
    return ["default", None]


def relevant_env(env: Mapping[str, str], extra: Sequence[str],
                 key: bytes) -> dict[str, str | None]:
    """Each variable that shapes the settings, as a keyed digest of its value (None when
    unset): a CREDSYNC_* value may be a secret (``notify.webhook``), and the note must not
    hold one."""
    names = {n for n in env if n.upper().startswith(ENV_PREFIXES)}
    names.update(ENV_NAMES, extra)
    return {n: _digest(key, env[n]) if n in env else None for n in sorted(names)}


def _digest(key: bytes, value: str) -> str:
    data = value.encode("utf-8", "surrogateescape")
    return blake2b(data, key=key, digest_size=16).hexdigest()


def code_signature() -> list[list[int]]:
    out = []
    for name in CODE:
        try:
            st = os.stat(os.path.join(_HERE, name))
            out.append([st.st_mtime_ns, st.st_size])
        except OSError:
            out.append([])
    return out


def _check_private(path: str, st: os.stat_result) -> None:
    # The note names the files a token is read from: one that someone else could write would
    # let them choose the token a session sends (and so the account it talks to).
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise OSError(f"{path} is writable by someone else")


def read_input(path: str, limit: int = MAX_INPUT_BYTES, private: bool = False) -> bytes | None:
    """A regular file's bytes; None when it is not there. OSError for anything else (a FIFO
    would block, a device never ends, a huge file is no credential); with ``private``, also for
    a file or directory not owned by this user alone."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        if private:
            _check_private(path, st)
            parent = os.path.dirname(path)
            _check_private(parent, os.stat(parent))
        chunks, total = [], 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise OSError(f"{path} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def fingerprint(path: str, data: bytes | None) -> Input:
    return [path, None, None] if data is None else [path, len(data), zlib.crc32(data)]


# --- the fast side -----------------------------------------------------------------------------

def lookup(given: str | None, env: Mapping[str, str] | None = None,
           now: float | None = None) -> str | None:
    """The token the full command would print, when its last note still holds; else None."""
    env = os.environ if env is None else env
    now = time.time() if now is None else now
    try:
        where = note_file(env)
        raw = read_input(where, MAX_NOTE_BYTES, private=True) if where else None
        note = json.loads(raw) if raw else None
        return _answer(note, given, env, now) if isinstance(note, dict) else None
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None  # a damaged or unreadable note is no note


def _answer(note: dict[str, object], given: str | None, env: Mapping[str, str],
            now: float) -> str | None:
    fresh_until = note["fresh_until"]
    if note.get("version") != VERSION or note.get("platform") != sys.platform:
        return None
    if not isinstance(fresh_until, (int, float)) or not now < fresh_until:
        return None
    if note["config"] != resolve_config(given, env):
        return None
    if note["cwd"] is not None and note["cwd"] != os.getcwd():
        return None
    extra = note["extra_env"]
    env_key = note["env_key"]
    if not isinstance(extra, list) or not isinstance(env_key, str):
        return None
    if note["env"] != relevant_env(env, extra, bytes.fromhex(env_key)):
        return None
    if note["code"] != code_signature():
        return None
    inputs, winner = note["inputs"], note["winner"]
    if not isinstance(inputs, list) or not isinstance(winner, list) or len(winner) != 3:
        return None
    path, start, end = winner
    if not isinstance(start, int) or not isinstance(end, int):
        return None
    held = None
    for entry in inputs:
        data = read_input(entry[0])
        if fingerprint(entry[0], data) != entry:
            return None
        if entry[0] == path:
            held = data
    if held is None or not 0 <= start < end <= len(held):
        return None
    token = held[start:end].decode("ascii")
    return token if token.isprintable() and not any(c.isspace() for c in token) else None


# --- the full side -----------------------------------------------------------------------------

class Note:
    """Written by the full ``credsync token``: ``begin`` before the settings are loaded,
    ``watch`` before any store or state file is read, ``remember`` once a fresh token is chosen.
    The note is written only when every input read the same at the end as at the start."""

    def __init__(self, given: str | None, env: Mapping[str, str] | None = None) -> None:
        self.given = given
        self.env = dict(os.environ if env is None else env)
        self.config = resolve_config(given, self.env)
        self.code = code_signature()
        self.config_input: Input | None = None
        self.extra_env: list[str] = []
        self.inputs: list[Input] = []
        self.files: dict[str, bytes | None] = {}
        self.relative = False

    def begin(self, config_path: str) -> None:
        """Read the config file the settings are about to be loaded from."""
        path = os.path.abspath(config_path)
        data = read_input(path)
        self.config_input = fingerprint(path, data)
        self.extra_env = _referenced_vars(data or b"", self.env)

    def watch(self, paths: Sequence[str]) -> None:
        """Read every credential and state file the decision is about to read."""
        # The CLI resolves a relative CLAUDE_CONFIG_DIR against the working dir, and so does
        # the full command: the answer then holds in this directory only.
        dir_vars = (self.env.get(n) for n in ("CLAUDE_SECURESTORAGE_CONFIG_DIR",
                                              "CLAUDE_CONFIG_DIR"))
        self.relative = any(not os.path.isabs(p) for p in paths) or any(
            v and not os.path.isabs(os.path.expanduser(v)) for v in dir_vars)
        for path in paths:
            self.files[path] = read_input(path)
        self.inputs = [fingerprint(p, d) for p, d in self.files.items()]

    def remember(self, token: str, fresh_until: float) -> bool:
        """Write the note for ``token``; False when it cannot be relied on (then none is left)."""
        try:
            note = self._build(token, fresh_until)
            if note is None:
                return False
            _write(json.dumps(note, sort_keys=True).encode(), self.env)
            return True
        except Exception:  # only an optimisation: the command's answer stands either way
            return False

    def _unchanged(self) -> bool:
        if self.config_input is None:
            return False
        path = str(self.config_input[0])
        again = [fingerprint(path, read_input(path))]
        again += [fingerprint(p, read_input(p)) for p in self.files]
        return again == [self.config_input, *self.inputs] and code_signature() == self.code

    def _build(self, token: str, fresh_until: float) -> dict[str, object] | None:
        if not self._unchanged():
            return None
        needle = token.encode("ascii", "strict")
        for path, data in self.files.items():
            start = data.find(needle) if data is not None else -1
            if start >= 0:
                winner = [path, start, start + len(needle)]
                break
        else:
            return None  # held only by the keychain: no shortcut
        env_key = os.urandom(16)  # per note: a digest tells nothing about another note's
        return {"version": VERSION, "platform": sys.platform, "config": self.config,
                "cwd": os.getcwd() if self.relative else None, "extra_env": self.extra_env,
                "env_key": env_key.hex(),
                "env": relevant_env(self.env, self.extra_env, env_key), "code": self.code,
                "inputs": [self.config_input, *self.inputs], "winner": winner,
                "fresh_until": fresh_until, "written_at": time.time()}


def _referenced_vars(config: bytes, env: Mapping[str, str]) -> list[str]:
    """``$NAME``, ``${NAME}`` and ``%NAME%`` in the config file and in CREDSYNC_* values: the
    variables path expansion reads."""
    import re

    text = config.decode("utf-8", "replace")
    text += "".join(v for n, v in env.items() if n.upper().startswith("CREDSYNC_"))
    found = re.findall(r"\$(\w+)|\$\{([^}]*)\}|%([^%]+)%", text)
    return sorted({name for groups in found for name in groups if name})


def _write(data: bytes, env: Mapping[str, str]) -> None:
    from pathlib import Path

    from agent.fsutil import atomic_write, ensure_private_dir

    where = note_file(env)
    if where is None:
        return
    target = Path(where)
    ensure_private_dir(target.parent)
    atomic_write(target, data)

