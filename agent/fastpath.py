"""``credsync token`` without click or pydantic, when nothing needs deciding.

Sessions run ``credsync token`` often (an API-key helper runs it per request), so its start-up is
most of its cost. When the settings validated earlier still hold (``agent.settings_cache``) and
the freshest login is valid and not due for a refresh, this prints its token and ends: the same
reads, the same logging set-up and the same output as the full command. In every other case
(other arguments, a changed config, a refresh due, no login, any error) it returns None and the
full command runs, which decides, reports and sets the exit code as always.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from agent.config import Settings

__all__ = ["main", "token_args", "try_token"]


def token_args(argv: Sequence[str]) -> tuple[bool, Path | None]:
    """(is it exactly ``token [--config PATH]``, the path given)."""
    args = list(argv)
    if not args or args[0] != "token":
        return False, None
    rest = args[1:]
    if not rest:
        return True, None
    if len(rest) == 2 and rest[0] == "--config" and rest[1] and not rest[1].startswith("-"):
        return True, Path(rest[1])
    if len(rest) == 1 and rest[0].startswith("--config=") and len(rest[0]) > len("--config="):
        return True, Path(rest[0].split("=", 1)[1])
    return False, None


def try_token(argv: Sequence[str]) -> int | None:
    """Print a fresh token and return 0, or return None for the full command to run."""
    matched, explicit = token_args(argv)
    if not matched:
        return None
    from agent import settings_cache

    view = settings_cache.load(explicit)
    if view is None:
        return None
    settings = cast("Settings", view)  # the same fields, validated earlier (settings_cache)
    from agent.logsetup import setup_logging
    from agent.runtime import fresh_token

    try:
        setup_logging(settings.agent.log_level, settings.agent.log_file, stderr=False)
        token = fresh_token(settings)
    except Exception:  # an optimisation never fails a command: the full path decides and reports
        return None
    if token is None:
        return None
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    return 0


def main() -> None:
    """The ``credsync`` console script: the fast path first, else the click command line."""
    code = try_token(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from agent.cli import main as cli_main

    cli_main()
