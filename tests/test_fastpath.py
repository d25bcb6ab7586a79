"""The start-up fast path of ``credsync token`` (the token note: no click, pydantic or pathlib)
and the no-debounce handling of finished writes: same results as the slow paths, only sooner."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest
from watchdog.events import FileClosedEvent, FileModifiedEvent, FileMovedEvent

from agent.cli.fastpath import token_args
from agent.clock import FakeClock
from agent.ledger import Ledger
from agent.loop.agent import Agent
from agent.loop.watcher import FileChanged, Watcher, _Handler
from agent.stores.claude_file import ClaudeFileStore
from tests.agentproc import REPO, write_config
from tests.factories import make_cred, write_cred

NOW_MS = 1_800_000_000_000


def config(tmp_path: Path) -> Path:
    dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
    sinks = [{"path": tmp_path / "s" / "token", "format": "env"}]
    return write_config(tmp_path / "config.toml", dirs, tmp_path / "state", keychain=False,
                        sinks=sinks, log_file=tmp_path / "log" / "c.log",
                        refresh={"enabled": True, "timeout_s": 7,
                                 "token_url": "http://127.0.0.1:9/token"})


def test_token_arguments_that_take_the_fast_path() -> None:
    assert token_args(["token"]) == (True, None)
    assert token_args(["token", "--config", "a.toml"]) == (True, "a.toml")
    assert token_args(["token", "--config=a.toml"]) == (True, "a.toml")
    for other in (["status"], ["token", "--help"], ["token", "--config"], [],
                  ["token", "--config", "a", "x"]):
        assert token_args(other)[0] is False


def _token(config_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "agent.cli", "token",
                           "--config", str(config_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def _imported(stderr: str, module: str) -> bool:
    return any(line.rstrip().endswith(f"| {module}") or line.rstrip().endswith(f" {module}")
               for line in stderr.splitlines() if line.startswith("import time:"))


@pytest.mark.integration
def test_token_fast_path_prints_the_same_token_with_the_lightest_imports(tmp_path: Path) -> None:
    path = config(tmp_path)
    fresh = make_cred(int((time.time() + 7 * 3600) * 1000))
    for d in ("cfg0", "cfg1"):
        write_cred(tmp_path / d, fresh)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    first, second = _token(path, env), _token(path, env)
    for out in (first, second):
        assert out.returncode == 0, out.stderr[-500:]
        assert out.stdout == fresh.access_token + "\n"
    assert _imported(first.stderr, "pydantic")  # decided in full, then noted
    # What the interpreter imports before any of ours (site, an editable install's finder) is
    # not the fast path's doing.
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60).stderr
    for heavy in ("pydantic", "click", "pathlib", "logging", "typing", "agent.credential"):
        assert not _imported(second.stderr, heavy) or _imported(bare, heavy), heavy
    # A login due for refresh is not the fast path's to decide: the full command runs.
    due = make_cred(int((time.time() + 30) * 1000))
    for d in ("cfg0", "cfg1"):
        write_cred(tmp_path / d, due)
    (tmp_path / "state" / "last-good.json").unlink(missing_ok=True)
    third = _token(path, env)
    assert _imported(third.stderr, "click")
    # (the refresh fails: nothing listens on the token URL; the login is still valid)
    assert third.returncode == 0 and third.stdout == due.access_token + "\n"


@pytest.mark.integration
def test_a_config_broken_after_noting_is_still_reported(tmp_path: Path) -> None:
    path = config(tmp_path)
    write_cred(tmp_path / "cfg0", make_cred(int((time.time() + 7 * 3600) * 1000)))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    assert _token(path, env).returncode == 0
    assert (tmp_path / "xdg-cache" / "credsync" / "token-note.json").is_file()
    path.write_text(path.read_text().replace("timeout_s = 7", "timeout_s = -1"))
    out = _token(path, env)
    assert out.returncode == 2 and "refresh.timeout_s" in out.stderr


def _agent(tmp_path: Path) -> tuple[Agent, ClaudeFileStore, ClaudeFileStore]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = ClaudeFileStore(tmp_path / "a"), ClaudeFileStore(tmp_path / "b")
    agent = Agent([a, b], Ledger(tmp_path / "state"), FakeClock(NOW_MS / 1000), queue.Queue())
    return agent, a, b


def test_a_finished_write_is_acted_on_without_the_debounce(tmp_path: Path) -> None:
    agent, a, b = _agent(tmp_path)
    write_cred(a.config_dir, make_cred(NOW_MS + 5000))
    agent.reconcile()
    newer = make_cred(NOW_MS + 9000)
    write_cred(a.config_dir, newer)
    agent.events.put(FileChanged(a.path))  # a change in progress: wait for the burst to end
    agent.step(timeout=0)
    assert b.read().valid != newer
    agent.events.put(FileChanged(a.path, complete=True))  # renamed into place: act now
    agent.step(timeout=0)
    assert b.read().valid == newer


def test_the_watcher_marks_renames_into_place_and_closes_after_writing(tmp_path: Path) -> None:
    target = tmp_path / ".credentials.json"
    events: queue.Queue[object] = queue.Queue()
    handler = _Handler(frozenset({target}), frozenset(target.parents), events)
    handler.on_any_event(FileMovedEvent(str(tmp_path / "x.tmp"), str(target)))
    handler.on_any_event(FileModifiedEvent(str(target)))
    handler.on_any_event(FileClosedEvent(str(target)))
    handler.on_any_event(FileMovedEvent(str(target), str(tmp_path / "gone")))
    got = [events.get_nowait() for _ in range(events.qsize())]
    # a modify (written in place, not closed yet) marks a writer at work; its close ends it
    assert got == [FileChanged(target, True), FileChanged(target, False, writing=True),
                   FileChanged(target, True), FileChanged(target, False)]


def test_the_watcher_does_not_ask_inotify_about_reads(tmp_path: Path) -> None:
    from watchdog.observers import Observer
    from watchdog.observers.inotify_c import InotifyConstants as C

    observer = Observer()
    watcher = Watcher([tmp_path / "cfg" / ".credentials.json"], queue.Queue(), observer)
    watcher.start()
    try:
        masks = [e.get_event_mask_from_filter() for e in observer.emitters]  # type: ignore[attr-defined]
        assert masks
        for mask in masks:
            assert not mask & (C.IN_OPEN | C.IN_CLOSE_NOWRITE)  # the agent's own reads
            for wanted in (C.IN_MOVED_TO, C.IN_MOVED_FROM, C.IN_CREATE, C.IN_DELETE,
                           C.IN_MODIFY, C.IN_CLOSE_WRITE, C.IN_ATTRIB, C.IN_DELETE_SELF):
                assert mask & wanted
    finally:
        watcher.stop()


def test_renames_into_place_are_never_held_back_by_watchdogs_move_pairing(tmp_path: Path
                                                                          ) -> None:
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    from agent.loop.watcher import MOVE_PAIRING_S

    assert InotifyMoveEventGrouper.delay == MOVE_PAIRING_S  # set when agent.loop.watcher loads
    target = tmp_path / "cfg" / ".credentials.json"
    target.parent.mkdir()
    events: queue.Queue[object] = queue.Queue()
    watcher = Watcher([target], events)
    watcher.start()
    try:
        slowest = 0.0
        for n in range(300):  # the CLI's write: a temp file renamed into place
            tmp = target.parent / f".credentials.json.tmp.{n}"
            tmp.write_text("{}")
            started = time.monotonic()
            os.replace(tmp, target)
            while True:
                event = events.get(timeout=2.0)
                if event == FileChanged(target, True):
                    break
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.25, f"a rename was seen {slowest * 1000:.0f} ms late"
    finally:
        watcher.stop()
