"""``credsync token`` without click, pydantic or the store modules, when nothing changed.

Sessions run ``credsync token`` often, so its start-up is most of its cost. When the note the
last full ``credsync token`` left still holds (``agent.cli.tokennote``: same config, environment,
code, credential and state files, deadline not reached), this prints the same token and ends.
In every other case (other arguments, any changed input, a refresh due, no note, any error) it
returns None and the full command runs, which decides, reports, sets the exit code and leaves a
new note. This module and ``agent.cli.tokennote`` import only the standard library's lightest parts.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main", "token_args", "try_token"]


def token_args(argv: Sequence[str]) -> tuple[bool, str | None]:
    """(is it exactly ``token [--config PATH]``, the path given)."""
    args = list(argv)
    if not args or args[0] != "token":
        return False, None
    rest = args[1:]
    if not rest:
        return True, None
    if len(rest) == 2 and rest[0] == "--config" and rest[1] and not rest[1].startswith("-"):
        return True, rest[1]
    if len(rest) == 1 and rest[0].startswith("--config=") and len(rest[0]) > len("--config="):
        return True, rest[0].split("=", 1)[1]
    return False, None


def try_token(argv: Sequence[str]) -> int | None:
    """Print the noted token and return 0, or return None for the full command to run."""
    matched, given = token_args(argv)
    if not matched:
        return None
    from agent.cli.tokennote import lookup

    token = lookup(given)
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
    from agent.cli.main import main as cli_main

    cli_main()
