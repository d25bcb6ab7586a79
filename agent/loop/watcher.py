"""Notice every write to the file stores (watchdog), and only enqueue: the agent loop acts.

Each target file is watched through its parent directory, because the CLI replaces the file
atomically (the event is a move whose destination is the file) and a watch on the file itself
would die with the first replace. A directory that does not exist yet is waited for from its
nearest existing ancestor; a watched directory that is deleted kills its watch silently, so
``sync()`` (called by the loop on directory events and on every tick) re-aims the watches.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

# Every kind of event but a file being opened or closed unwritten, which the handler ignores:
# asked of inotify this way, the kernel does not even report them. That matters because the
# agent reads every store each round (two such events per file read, for no purpose).
WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileMovedEvent,
    FileDeletedEvent, DirCreatedEvent, DirModifiedEvent, DirAttribEvent, DirDeletedEvent,
    DirMovedEvent,
]


# watchdog holds an IN_MOVED_FROM for up to ``delay`` (0.5 s) to pair it with its IN_MOVED_TO.
# Its queue sleeps out that whole delay when it picks up the MOVED_FROM before the MOVED_TO has
# been queued, which happens now and then for a rename within one directory (the CLI's every
# write: measured, about one write in 400 was seen 0.5 s late). The two events of a rename come
# from the same read, so a few milliseconds pair them; an unpaired one costs nothing here, since
# the handler looks at both paths of every event on their own.
MOVE_PAIRING_S = 0.02
# How long ``Watcher.stop`` waits for watchdog to close its watches before leaving it to finish.
STOP_WAIT_S = 0.3


def shorten_move_pairing(delay_s: float = MOVE_PAIRING_S) -> bool:
    """Set watchdog's move-pairing delay (Linux); False where watchdog has none to set."""
    for module, name in (("watchdog.observers.inotify_move_event_grouper",  # watchdog >= 6
                          "InotifyMoveEventGrouper"),
                         ("watchdog.observers.inotify_buffer", "InotifyBuffer")):  # 4 and 5
        try:
            grouper = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # another version, or not Linux
            continue
        grouper.delay = delay_s
        return True
    return False


shorten_move_pairing()


@dataclass(frozen=True)
class FileChanged:
    path: Path
    # The writer is done with it: renamed into place (the CLI's atomic replace) or closed after
    # writing. Nothing more of this write is coming, so the agent need not wait out its debounce.
    complete: bool = False
    # Written in place (created, truncated or modified) and not closed yet: a writer has it
    # open, and what it holds now may be only the first part of what is coming.
    writing: bool = False


@dataclass(frozen=True)
class DirsChanged:
    """A directory on the way to a target appeared or vanished: the watches must be re-aimed."""


def _watch_dir(target: Path) -> Path:
    """The directory to watch for ``target``: its parent, or the nearest existing ancestor."""
    candidate = target.parent
    while not candidate.is_dir() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class _Handler(FileSystemEventHandler):
    def __init__(self, targets: frozenset[Path], ancestors: frozenset[Path],
                 events: queue.Queue[object]) -> None:
        self._targets = targets
        self._ancestors = ancestors
        self._events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (FileOpenedEvent, FileClosedNoWriteEvent)):
            return
        dest = getattr(event, "dest_path", "")
        for raw in (event.src_path, dest):
            if not raw:
                continue
            path = Path(os.fsdecode(raw))
            if path in self._targets:
                complete = (isinstance(event, (FileClosedEvent, FileDeletedEvent)) or
                            (isinstance(event, FileMovedEvent) and raw == dest))
                writing = isinstance(event, (FileCreatedEvent, FileModifiedEvent))
                self._events.put(FileChanged(path, complete, writing))
            if (isinstance(event, (DirCreatedEvent, DirDeletedEvent, DirMovedEvent))
                    and path in self._ancestors):
                self._events.put(DirsChanged())


class Watcher:
    def __init__(self, targets: Iterable[Path], events: queue.Queue[object],
                 observer: BaseObserver | None = None) -> None:
        self.targets = frozenset(Path(os.path.abspath(t)) for t in targets)
        ancestors: set[Path] = set()
        for target in self.targets:
            ancestors.update(target.parents)
        self._handler = _Handler(self.targets, frozenset(ancestors), events)
        self._observer = observer or Observer()
        self._watches: dict[Path, tuple[ObservedWatch, int | None]] = {}

    def start(self) -> None:
        self.sync()
        # Daemonic (watchdog's default, made sure of here): a watch still closing never holds
        # up the process's exit.
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        """Stop watching, waiting at most ``STOP_WAIT_S``.

        Closing the observer closes every emitter one after the other, each joining its inotify
        reader: under load, or with hundreds of watched directories, that takes seconds, out of
        the agent's 2 s stop budget. Nothing depends on it having finished (no event is wanted
        any more), so it finishes in a daemon thread and the agent goes on to exit."""
        closer = threading.Thread(target=self._close_observer, name="credsync-watch-close",
                                  daemon=True)
        closer.start()
        closer.join(STOP_WAIT_S)

    def _close_observer(self) -> None:
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join()

    @property
    def watched_dirs(self) -> list[Path]:
        return sorted(self._watches)

    def sync(self) -> bool:
        """Aim a watch at each target's directory; return True when any watch changed."""
        wanted = {_watch_dir(t) for t in self.targets}
        changed = False
        for directory, (watch, inode) in list(self._watches.items()):
            if directory not in wanted or _inode(directory) != inode:
                # Gone, replaced by a new directory of the same name, or no longer needed.
                with contextlib.suppress(KeyError, OSError):
                    self._observer.unschedule(watch)
                del self._watches[directory]
                changed = True
        for directory in wanted - self._watches.keys():
            inode = _inode(directory)
            if inode is None:
                continue
            try:
                watch = self._observer.schedule(self._handler, str(directory), recursive=False,
                                                event_filter=WATCHED_EVENTS)
            except OSError:
                continue  # vanished between the check and the watch; the next sync retries
            self._watches[directory] = (watch, inode)
            changed = True
        return changed
