"""Where things live by default, per platform (platformdirs), and the Claude config dir rules."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

APP = "credsync"


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
    for name in ("CLAUDE_SECURESTORAGE_CONFIG_DIR", "CLAUDE_CONFIG_DIR"):
        if name in env:
            value = env[name]
            return Path(value).expanduser() if value else Path("~/.claude").expanduser()
    return Path("~/.claude").expanduser()


def expand(path: str | Path) -> Path:
    # os.path.expanduser leaves an unknown ``~user`` as it is; Path.expanduser raises.
    return Path(os.path.expanduser(os.path.expandvars(str(path))))
