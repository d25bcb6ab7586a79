"""The interface every credential store implements (checked by tests/test_store_contract.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from agent.credential import Credential, Reading


class Store(Protocol):
    name: str  # unique, stable, shown in status: "file:/home/u/.claude", "keychain", "sink:..."
    kind: str  # "claude-file", "keychain" or "sink"
    location: str  # path or keychain item, for status
    is_source: bool  # may its credential win the freshness contest?

    @property
    def watch_path(self) -> Path | None:
        """The file whose changes must be noticed, or None (keychains are polled)."""
        ...

    def read(self) -> Reading:
        """What the store holds now. Raises nothing for a damaged store: the reading says so."""
        ...

    # File stores also set ``written``: the stat signature of the file they last put in place
    # (agent.fsutil.atomic_write), which tells the agent's own writes from anyone else's.

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        """Make the store hold ``cred``; False when it already did (nothing written), or when
        it holds a fresher credential other than ``supersedes`` (never go backwards).

        Raises StoreError when it cannot, and for a blank credential (never written anywhere).
        """
        ...


@runtime_checkable
class Background(Protocol):
    """A store whose reads and writes can be started now and finished later (the keychain: its
    calls run on a worker thread, so the agent does its file work meanwhile). The finishing
    functions return what ``read`` and ``write`` would, or raise what they would."""

    def start_read(self) -> Callable[[], Reading]: ...

    def start_write(self, cred: Credential,
                    supersedes: Credential | None = None) -> Callable[[], bool]: ...
