"""Files: private whatever the umask, and no sink written where another user could read or
redirect it.

The rule (agent/fsutil.py, ``unsafe_write_reason``): the directory a sink is renamed into must be
owned by us or root and not writable by group or others (a sticky directory of our own is fine);
an existing sink must be a regular file of ours, or a symlink (ours or root's) to a regular file
of ours or to nothing yet, with both directories safe. Files owned by another user are made here
with ``os.chown`` to uid 65534, so these tests need root (as CI runs them).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.credential import ReadState
from agent.errors import StoreError
from agent.fsutil import unsafe_dir_reason, unsafe_write_reason
from agent.ledger import scope_dir
from agent.sim.server import OAuthServer
from agent.stores.sink import SinkStore
from tests.agentproc import REPO, AgentProcess, credsync, wait_for, write_config
from tests.factories import make_cred, write_cred, write_doc

BASE_MS = (int(time.time()) + 6 * 3600) * 1000  # a real login: expires within a day
OTHER_UID = 65534  # nobody


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests make files owned by another user with os.chown: run as root")


def mkdir(path: Path, mode: int, uid: int | None = None) -> Path:
    path.mkdir(parents=True)
    os.chmod(path, mode)  # exactly this mode, whatever the umask
    if uid is not None:
        os.chown(path, uid, -1)
    return path


def foreign_file(path: Path, text: str = "not yours") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chown(path, OTHER_UID, OTHER_UID)
    return path


def symlink(link: Path, target: Path, uid: int | None = None) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    if uid is not None:
        os.lchown(link, uid, -1)
    return link


# --- the rule, case by case ------------------------------------------------------------------

Case = Callable[[Path], Path]  # builds the situation under a root dir, returns the sink path


def _missing_in_private_dir(root: Path) -> Path:
    return mkdir(root / "d", 0o700) / "token"


def _in_new_dirs(root: Path) -> Path:
    return root / "new" / "deeper" / "token"


def _existing_own_file(root: Path) -> Path:
    path = mkdir(root / "d", 0o700) / "token"
    path.write_text("x")
    return path


def _sticky_own_dir(root: Path) -> Path:
    return mkdir(root / "d", 0o1777) / "token"


def _link_to_own_file(root: Path) -> Path:
    target = mkdir(root / "t", 0o700) / "file"
    target.write_text("x")
    return symlink(mkdir(root / "d", 0o755) / "token", target)


def _dangling_link_in_safe_dirs(root: Path) -> Path:
    return symlink(mkdir(root / "d", 0o700) / "token", mkdir(root / "t", 0o700) / "later")


SAFE: dict[str, Case] = {
    "missing file in a 0700 dir": _missing_in_private_dir,
    "missing dirs (made 0700)": _in_new_dirs,
    "our own file": _existing_own_file,
    "our own sticky dir": _sticky_own_dir,
    "symlink to our file": _link_to_own_file,
    "dangling symlink, safe dirs": _dangling_link_in_safe_dirs,
}

UNSAFE: dict[str, tuple[Case, str]] = {
    "group-writable dir": (lambda r: mkdir(r / "d", 0o770) / "token",
                           "is writable by other users (mode 0770); run `chmod go-w"),
    "world-writable dir": (lambda r: mkdir(r / "d", 0o777) / "token",
                           "is writable by other users (mode 0777)"),
    "other-writable only": (lambda r: mkdir(r / "d", 0o702) / "token",
                            "is writable by other users (mode 0702)"),
    "sticky dir of another user": (lambda r: mkdir(r / "d", 0o1777, OTHER_UID) / "token",
                                   f"is owned by uid {OTHER_UID}, not by you"),
    "dir of another user": (lambda r: mkdir(r / "d", 0o755, OTHER_UID) / "token",
                            f"is owned by uid {OTHER_UID}, not by you"),
    "file of another user": (lambda r: foreign_file(mkdir(r / "d", 0o700) / "token"),
                             f"it is owned by uid {OTHER_UID}, not by you"),
    "symlink to a file of another user": (
        lambda r: symlink(mkdir(r / "d", 0o700) / "token", foreign_file(r / "victim" / "f")),
        f"a file owned by uid {OTHER_UID}, not by you (uid 0); remove the link"),
    "symlink owned by another user": (
        lambda r: symlink(mkdir(r / "d", 0o700) / "token", r / "t", uid=OTHER_UID),
        f"it is a symlink owned by uid {OTHER_UID}"),
    "symlink into a world-writable dir": (
        lambda r: symlink(mkdir(r / "d", 0o700) / "token", mkdir(r / "w", 0o777) / "f"),
        "is writable by other users (mode 0777)"),
    "symlink in a world-writable dir": (
        lambda r: symlink(mkdir(r / "w", 0o777) / "token", mkdir(r / "t", 0o700) / "f"),
        "is writable by other users (mode 0777)"),
    "a FIFO": (lambda r: _fifo(mkdir(r / "d", 0o700) / "token"), "it is not a regular file"),
    "a directory": (lambda r: mkdir(r / "d" / "token", 0o700), "it is not a regular file"),
    "symlink to a device": (lambda r: symlink(mkdir(r / "d", 0o700) / "token", Path("/dev/null")),
                            "which is not a regular file"),
}


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("case", list(SAFE.values()), ids=list(SAFE))
def test_safe_places_are_accepted_and_written(tmp_path: Path, case: Case) -> None:
    path = case(tmp_path)
    assert unsafe_write_reason(path) is None
    store = SinkStore(path, "access-token")
    cred = make_cred(BASE_MS)
    assert store.write(cred) is True
    reading = store.read()
    assert reading.state is ReadState.VALID and reading.credential is not None
    assert reading.credential.access_token == cred.access_token


@pytest.mark.parametrize(("case", "reason"), list(UNSAFE.values()), ids=list(UNSAFE))
def test_unsafe_places_are_refused_with_the_reason_and_the_fix(tmp_path: Path, case: Case,
                                                               reason: str) -> None:
    path = case(tmp_path)
    before = _snapshot(tmp_path)
    store = SinkStore(path, "access-token")
    cred = make_cred(BASE_MS)
    with pytest.raises(StoreError) as caught:
        store.write(cred)
    message = str(caught.value)
    assert message.startswith(f"refusing to write {path}: ") and reason in message, message
    assert cred.access_token not in message
    assert _snapshot(tmp_path) == before  # nothing written, no temp file left anywhere
    reading = store.read()  # what status shows
    assert reading.state is ReadState.ERROR and reading.detail == message


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(path)] = (st.st_mode, st.st_uid, data)
    return out


def test_the_directory_rule_by_itself(tmp_path: Path) -> None:
    assert unsafe_dir_reason(tmp_path / "not-yet") is None
    assert unsafe_dir_reason(mkdir(tmp_path / "a", 0o755)) is None
    assert unsafe_dir_reason(mkdir(tmp_path / "b", 0o1777)) is None  # sticky and ours
    reason = unsafe_dir_reason(mkdir(tmp_path / "c", 0o775))
    assert reason == (f"its directory {tmp_path / 'c'} is writable by other users (mode 0775); "
                      f"run `chmod go-w {tmp_path / 'c'}` or choose a private directory")


def test_a_refused_sink_is_written_once_its_directory_is_fixed(tmp_path: Path) -> None:
    shared = mkdir(tmp_path / "shared", 0o777)
    store = SinkStore(shared / "token", "env")
    cred = make_cred(BASE_MS)
    with pytest.raises(StoreError, match="chmod go-w"):
        store.write(cred)
    os.chmod(shared, 0o700)  # what the message says to do
    assert store.write(cred) is True
    assert (shared / "token").read_text() == f"CLAUDE_CODE_OAUTH_TOKEN={cred.access_token}\n"


# --- the agent: refused sinks in status, the other stores still written ----------------------

def _status(config: Path) -> dict[str, dict[str, str]]:
    out = credsync(["status", "--json", "--config", str(config)])
    assert out.returncode == 0, out.stderr
    return {s["location"]: s for s in json.loads(out.stdout)["stores"]}


@pytest.mark.integration
def test_the_agent_reports_refused_sinks_and_keeps_writing_the_others(tmp_path: Path) -> None:
    dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
    for d in dirs:
        d.mkdir()
    good = tmp_path / "sessions" / "good" / "token"
    shared_dir = mkdir(tmp_path / "shared", 0o777)
    shared = shared_dir / "token"
    victim = foreign_file(tmp_path / "victim" / "file", "victim's own content")
    link = symlink(tmp_path / "sessions" / "link" / "token", victim)
    state = tmp_path / "state"
    config = write_config(tmp_path / "config.toml", dirs, state, keychain=False,
                          sinks=[{"path": p, "format": "access-token"}
                                 for p in (good, shared, link)])
    first = make_cred(BASE_MS)
    write_cred(dirs[0], first)
    agent = AgentProcess(config)
    try:
        agent.wait_started(state)
        wait_for(lambda: good.exists() and first.access_token in good.read_text()
                 and (dirs[1] / ".credentials.json").exists(), 10, "the good stores written")
        stores = _status(config)
        assert stores[f"{good} (access-token)"]["state"] == "in-sync"
        assert stores[str(dirs[1] / ".credentials.json")]["state"] == "in-sync"
        refused = stores[f"{shared} (access-token)"]
        assert refused["state"] == "error" and f"run `chmod go-w {shared_dir}`" in \
            refused["detail"]
        refused = stores[f"{link} (access-token)"]
        assert refused["state"] == "error" and f"a symlink to {victim}" in refused["detail"]
        assert "remove the link" in refused["detail"]

        os.chmod(shared_dir, 0o700)  # the user follows the advice; a new login comes in
        newer = make_cred(BASE_MS + 60_000)
        write_cred(dirs[1], newer)
        wait_for(lambda: shared.exists() and newer.access_token in shared.read_text(), 10,
                 "the fixed sink written")
        wait_for(lambda: newer.access_token in good.read_text(), 5, "the good sink updated")
        assert victim.read_text() == "victim's own content"  # never written, still theirs
        assert victim.stat().st_uid == OTHER_UID and link.is_symlink()
        assert agent.proc.poll() is None
    finally:
        agent.stop()


# --- modes whatever the umask -----------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer(access_lifetime_s=3600) as srv:
        yield srv


def _walk(root: Path) -> list[Path]:
    return [root, *root.rglob("*")] if root.exists() else []


@pytest.mark.integration
@pytest.mark.parametrize("umask", [0o000, 0o077], ids=["umask-000", "umask-077"])
def test_files_0600_and_dirs_0700_whatever_the_umask(tmp_path: Path, server: OAuthServer,
                                                     umask: int) -> None:
    dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
    dirs[1].mkdir()
    oauth = server.issue_login()
    write_doc(dirs[0], {"claudeAiOauth": oauth})
    made = [tmp_path / "deep", tmp_path / "logs", tmp_path / "sessions"]  # all credsync's
    sinks = [tmp_path / "sessions" / "a" / "b" / f"token.{fmt}"
             for fmt in ("claude", "access-token", "env", "json")]
    state = tmp_path / "deep" / "er" / "state"
    config = write_config(
        tmp_path / "config.toml", dirs, state, keychain=False, log_level="debug",
        log_file=tmp_path / "logs" / "x" / "credsync.log",
        sinks=[{"path": p, "format": p.suffix[1:]} for p in sinks],
        refresh={"token_url": server.url, "jitter": 0})
    cmd = [sys.executable, "-m", "agent.cli"]
    refreshed = subprocess.run([*cmd, "refresh", "--config", str(config)], cwd=REPO,
                               capture_output=True, text=True, timeout=60, umask=umask)
    assert refreshed.returncode == 0, refreshed.stderr
    with open(tmp_path / "agent.out", "w") as out:
        agent = subprocess.Popen([*cmd, "run", "--config", str(config)], cwd=REPO, umask=umask,
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for(lambda: all(p.exists() for p in sinks) and _stats_rounds(state) >= 1, 15,
                     "every sink written")
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=10)
    assert agent.returncode == 0, (tmp_path / "agent.out").read_text()
    checked = [p for root in made for p in _walk(root)]
    checked += [d / ".credentials.json" for d in dirs]
    assert len(checked) >= 15 and (scope_dir(state) / "last-good.json") in checked
    for path in checked:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {mode:04o}"


def _stats_rounds(state: Path) -> int:
    try:
        obj = json.loads((scope_dir(state) / "agent.json").read_text())
    except (OSError, ValueError):
        return 0
    rounds = obj.get("rounds", 0)
    return rounds if isinstance(rounds, int) else 0


def test_snapshot_helper_sees_changes(tmp_path: Path) -> None:
    # The refusal tests rely on _snapshot noticing any write: check that it does.
    before = _snapshot(tmp_path)
    (tmp_path / "f").write_text("x")
    assert _snapshot(tmp_path) != before
