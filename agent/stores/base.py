"""The interface every credential store implements (checked by tests/test_store_contract.py)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from agent.credential import Credential, Reading

Signature = tuple[int, int, int]


class Role(str, enum.Enum):
    """What a store is for, which decides how the winner rule treats it (``agent.winner``)."""

    HOLDER = "holder"  # the CLI's own store: a login is born and ended here
    COPY = "copy"  # credsync's own copy of the login: may win, never resurrects one
    OUTPUT = "output"  # a sink: what sessions read; never a source, never judged


class Store:
    """Base of every store. Subclasses set the class attributes and implement read/write."""

    name: str  # unique, stable, shown in status: "file:/home/u/.claude", "keychain", "sink:..."
    kind: str  # "claude-file", "keychain" or "sink"
    location: str  # path or keychain item, for status
    role: Role
    # The config dir whose login this store holds (the CLI's files), else None.
    config_dir: Path | None = None
    # The stat signature of the file this store last put in place (agent.fsutil.atomic_write):
    # it tells the agent's own writes from anyone else's. None for stores that are not files.
    written: Signature | None = None
    # Seconds between two ``changed()`` checks for a store nobody can watch; None: not polled.
    poll_s: float | None = None

    @property
    def session_dir(self) -> Path | None:
        """The dir whose sessions use this store's login (alerts name it): the config dir,
        or a Codex home."""
        return self.config_dir

    @property
    def is_source(self) -> bool:
        """May its credential win the freshness contest?"""
        return self.role is not Role.OUTPUT

    @property
    def watch_path(self) -> Path | None:
        """The file whose changes must be noticed, or None (keychains are polled)."""
        return None

    def changed(self) -> bool:
        """For a polled store: a cheap check that it may hold something new since the last
        read (then the agent runs a round)."""
        return False

    def read(self) -> Reading:
        """What the store holds now. Raises nothing for a damaged store: the reading says so."""
        raise NotImplementedError

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        """Make the store hold ``cred``; False when it already did (nothing written), or when
        it holds a fresher credential other than ``supersedes`` (never go backwards).

        Raises StoreError when it cannot, and for a blank credential (never written anywhere).
        """
        raise NotImplementedError

    def write_blocker(self) -> str | None:
        """Why credsync may not write this store now, from its last read (an item only the CLI
        may keep, such as a macOS Keychain item another program owns); None when it may. A
        holder that cannot take a new login must not see one made: nothing is refreshed."""
        return None

    def release_orphaned_locks(self) -> list[Path]:
        """Free locks left by a credsync process that died holding them; the paths freed."""
        return []

    def close(self) -> None:
        """Release what the store keeps open (a worker thread, a connection)."""


@runtime_checkable
class Background(Protocol):
    """A store whose reads and writes can be started now and finished later (the keychain: its
    calls run on a worker thread, so the agent does its file work meanwhile). The finishing
    functions return what ``read`` and ``write`` would, or raise what they would."""

    def start_read(self) -> Callable[[], Reading]: ...

    def start_write(self, cred: Credential,
                    supersedes: Credential | None = None) -> Callable[[], bool]: ...
