"""Where things live by default, per platform (platformdirs), and the Claude config dir rules."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import platformdirs

APP = "credsync"
# The variables that choose the CLI's config dir, strongest first.
CLAUDE_DIR_VARS = ("CLAUDE_SECURESTORAGE_CONFIG_DIR", "CLAUDE_CONFIG_DIR")


def default_config_file() -> Path:
    return platformdirs.user_config_path(APP, appauthor=False) / "config.toml"


def default_state_dir() -> Path:
    return platformdirs.user_state_path(APP, appauthor=False)


def default_log_file() -> Path:
    return platformdirs.user_log_path(APP, appauthor=False) / "credsync.log"


def current_claude_config_dir(env: Mapping[str, str] | None = None) -> Path:
    """The config dir whose login the CLI uses now, by the CLI's own rules.

    CLAUDE_SECURESTORAGE_CONFIG_DIR overrides CLAUDE_CONFIG_DIR for credentials; an empty value
    means the default.
    """
    env = os.environ if env is None else env
    for name in CLAUDE_DIR_VARS:
        if name in env:
            value = env[name]
            # abspath: the CLI resolves a relative value against its working directory.
            return Path(os.path.abspath(os.path.expanduser(value))) if value else \
                Path("~/.claude").expanduser()
    return Path("~/.claude").expanduser()


# $NAME and ${NAME}; %NAME% too where the platform's expandvars reads it (Windows).
_VAR = re.compile(r"\$(\w+)|\$\{([^}]*)\}" + (r"|%([^%]+)%" if sys.platform == "win32" else ""))
ABSOLUTE_RULE = "expected an absolute path; ~ and $VARS that are set are allowed"


def expand(path: str | Path, env: Mapping[str, str] | None = None) -> Path:
    """``path`` with ``~`` and ``$VARS`` expanded; ValueError unless the result is absolute.

    os.path leaves an unknown ``~user`` or an unset ``$VAR`` as it is, which would make the
    path relative to whatever directory the agent was started in: refused instead.
    """
    env = os.environ if env is None else env
    text = str(path)
    for groups in _VAR.findall(text):
        name = next(g for g in groups if g)
        if not env.get(name):
            raise ValueError(f"${name} is not set (or is empty); {ABSOLUTE_RULE}")
    expanded = os.path.expanduser(os.path.expandvars(text))
    if expanded.startswith("~"):
        user = expanded[1:].replace(os.sep, "/").split("/", 1)[0]
        raise ValueError(f"~{user} is not a known user; {ABSOLUTE_RULE}")
    if not os.path.isabs(expanded):
        raise ValueError(f"a relative path; {ABSOLUTE_RULE}")
    return Path(expanded)


def expand_literal(path: str | Path) -> Path:
    """A path typed on the command line: ``~`` expanded (as a shell would), ``$`` taken
    literally (the shell already expanded what it meant to), relative to the working dir."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))
