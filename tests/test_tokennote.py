"""The token note behind ``credsync token``'s fast path: it answers only while every input the
full command decided on is byte-for-byte the same, and it never holds a token."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest
from platformdirs.macos import MacOS
from platformdirs.unix import Unix

from agent.cli import tokennote
from agent.cli.tokennote import Note, lookup, note_file, resolve_config
from agent.config import config_path, load_settings
from agent.credential import Credential
from agent.ledger import Ledger, scope_dir
from agent.loop.runtime import note_allowed, valid_token
from tests.agentproc import write_config
from tests.factories import make_cred, write_cred

HOURS_MS = 3_600_000


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    yield home / "credsync" / "token-note.json"


def fresh(hours: float = 7) -> Credential:
    return make_cred(int((time.time() + hours * 3600) * 1000))


def setup(tmp_path: Path, cred: Credential | None = None, **kw: object) -> Path:
    dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
    cred = cred or fresh()
    for d in dirs:
        write_cred(d, cred)
    options: dict[str, object] = {"keychain": False, "log_file": tmp_path / "log" / "c.log",
                                  "refresh": {"enabled": True,
                                              "token_url": "http://127.0.0.1:9/token"}}
    options.update(kw)
    return write_config(tmp_path / "config.toml", dirs, tmp_path / "state",
                        **options)  # type: ignore[arg-type]


def full_token(path: Path, given: str | None = None) -> str:
    """What ``credsync token --config PATH`` does in full, in this process."""
    note = Note(str(path) if given is None else given)
    note.begin(str(config_path(path)))
    settings, _ = load_settings(path)
    return valid_token(settings, note)


def test_the_full_command_leaves_a_note_the_next_call_answers_from(tmp_path: Path,
                                                                   cache: Path) -> None:
    path = setup(tmp_path)
    assert lookup(str(path)) is None  # no note yet
    token = full_token(path)
    assert cache.is_file() and oct(cache.stat().st_mode & 0o777) == "0o600"
    assert lookup(str(path)) == token
    assert lookup(None) is None  # another config (the default): not this note


def test_the_note_holds_no_token(tmp_path: Path, cache: Path) -> None:
    cred = fresh()
    full_token(setup(tmp_path, cred))
    text = cache.read_text()
    assert cred.access_token not in text and cred.refresh_token not in text
    assert cred.access_token[:12] not in text


@pytest.mark.parametrize("change", [
    "config", "new CREDSYNC_ variable", "referenced variable", "credential same size",
    "credential removed", "state file created", "journal appended", "last-good changed",
    "other cwd with a relative CLAUDE_CONFIG_DIR"])
def test_any_changed_input_misses(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                  change: str) -> None:
    monkeypatch.setenv("SINKDIR", str(tmp_path / "s"))
    path = setup(tmp_path)
    path.write_text(path.read_text() + '\n[[sinks]]\npath = "$SINKDIR/t"\n')
    if change == "other cwd with a relative CLAUDE_CONFIG_DIR":
        # Relative paths in the config are refused; the CLI's variable may still be relative.
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("CLAUDE_CONFIG_DIR", "cfg0")
        path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                if not line.startswith("config_dirs")))
    token = full_token(path)
    assert lookup(str(path)) == token
    state = tmp_path / "state"
    cfg0 = tmp_path / "cfg0" / ".credentials.json"
    if change == "config":
        path.write_text(path.read_text() + "\n# a comment\n")
    elif change == "new CREDSYNC_ variable":
        monkeypatch.setenv("CREDSYNC_AGENT__LOG_LEVEL", "warning")
    elif change == "referenced variable":
        monkeypatch.setenv("SINKDIR", str(tmp_path / "elsewhere"))
    elif change == "credential same size":
        raw = bytearray(cfg0.read_bytes())
        i = raw.index(b"sk-ant-oat01-") + len("sk-ant-oat01-")
        raw[i] = ord("x") if raw[i] != ord("x") else ord("y")
        cfg0.write_bytes(bytes(raw))
    elif change == "credential removed":
        (tmp_path / "cfg1" / ".credentials.json").unlink()
    elif change == "state file created":
        (state / "journal").write_text("+abc\n")
    elif change == "journal appended":
        with open(state / "journal", "a") as fh:
            fh.write("+abc\n")
    elif change == "last-good changed":
        (scope_dir(state) / "last-good.json").write_text(json.dumps({"claudeAiOauth": {}}))
    elif change == "other cwd with a relative CLAUDE_CONFIG_DIR":
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
    assert lookup(str(path)) is None, change


def test_a_relative_config_path_is_resolved_against_the_cwd(tmp_path: Path, cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    path = setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    token = full_token(Path("config.toml"), given="config.toml")
    assert lookup("config.toml") == token
    assert lookup("./config.toml") == token  # the same file
    monkeypatch.chdir(tmp_path / "cfg0")
    assert lookup("config.toml") is None  # no such file there
    assert lookup(str(path)) == token


def test_the_deadline_ends_the_note(tmp_path: Path, cache: Path) -> None:
    cred = fresh(hours=7)
    token = full_token(setup(tmp_path, cred))
    path = str(tmp_path / "config.toml")
    note = json.loads(cache.read_text())
    # 80 % of a nominal 8 h life +- 10 % jitter, never past expiry.
    assert time.time() < note["fresh_until"] <= cred.expires_at
    assert lookup(path, now=note["fresh_until"] - 1) == token
    assert lookup(path, now=note["fresh_until"]) is None
    assert lookup(path, now=cred.expires_at + 1) is None


def test_refresh_off_notes_until_expiry(tmp_path: Path, cache: Path) -> None:
    cred = fresh(hours=1)  # due already, had refresh been on
    path = setup(tmp_path, cred, refresh={"enabled": False})
    assert full_token(path) == cred.access_token
    assert json.loads(cache.read_text())["fresh_until"] == cred.expires_at


@pytest.mark.parametrize("damage", [b"", b"{", b"[]", b"null", b'{"version": 1}',
                                    b"\xff\xfe garbage", b'{"fresh_until": "x"}'])
def test_a_damaged_note_is_no_note(tmp_path: Path, cache: Path, damage: bytes) -> None:
    path = setup(tmp_path)
    full_token(path)
    cache.write_bytes(damage)
    assert lookup(str(path)) is None


def test_a_note_with_wrong_types_everywhere_is_no_note(tmp_path: Path, cache: Path) -> None:
    path = setup(tmp_path)
    full_token(path)
    good = json.loads(cache.read_text())
    for key in good:
        for bad in (None, 1, "x", [], {}, [1, 2, 3], ["a", 0, 10**9]):
            if bad == good[key]:
                continue
            cache.write_text(json.dumps({**good, key: bad}))
            assert lookup(str(path)) is None or key in ("written_at",), (key, bad)


def test_a_note_others_could_write_is_no_note(tmp_path: Path, cache: Path) -> None:
    path = setup(tmp_path)
    token = full_token(path)
    cache.chmod(0o622)
    assert lookup(str(path)) is None
    cache.chmod(0o600)
    cache.parent.chmod(0o777)
    assert lookup(str(path)) is None
    cache.parent.chmod(0o700)
    assert lookup(str(path)) == token


def test_a_fifo_in_place_of_a_credential_file_does_not_hang(tmp_path: Path,
                                                            cache: Path) -> None:
    path = setup(tmp_path)
    full_token(path)
    cfg1 = tmp_path / "cfg1" / ".credentials.json"
    cfg1.unlink()
    os.mkfifo(cfg1)
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(lookup(str(path))), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive() and result == [None]


def test_a_token_held_only_in_the_last_good_copy_is_answered_from_there(tmp_path: Path,
                                                                       cache: Path) -> None:
    path = setup(tmp_path)
    newer = fresh(hours=7.5)  # the guardian's copy, fresher than both files
    Ledger(tmp_path / "state", [tmp_path / "cfg0", tmp_path / "cfg1"]).save_last_good(newer)
    assert full_token(path) == newer.access_token
    assert json.loads(cache.read_text())["winner"][0].endswith("last-good.json")
    assert lookup(str(path)) == newer.access_token


def test_no_note_for_a_token_found_in_no_file_read(tmp_path: Path, cache: Path) -> None:
    path = setup(tmp_path)
    note = Note(str(path))
    note.begin(str(path))
    note.watch([str(tmp_path / "cfg0" / ".credentials.json")])
    assert note.remember("sk-ant-oat01-from-the-keychain", time.time() + 60) is False
    assert not cache.exists()


def test_no_note_when_an_input_changes_during_the_decision(tmp_path: Path, cache: Path) -> None:
    path = setup(tmp_path)
    note = Note(str(path))
    note.begin(str(path))
    load_settings(path)
    note.watch([str(tmp_path / "cfg0" / ".credentials.json")])
    write_cred(tmp_path / "cfg0", fresh())  # another writer, between the reads
    assert note.remember("sk-ant-oat01-whatever", time.time() + 60) is False
    assert not cache.exists()


def test_when_a_note_is_allowed(tmp_path: Path, cache: Path) -> None:
    settings, _ = load_settings(setup(tmp_path, keychain=True))
    assert note_allowed(settings, platform="linux")  # credsync's own copy of the files
    assert not note_allowed(settings, platform="darwin")  # Claude Code's own store
    debug, _ = load_settings(setup(tmp_path, log_level="debug"))
    assert not note_allowed(debug, platform="linux")


def test_every_module_the_answer_depends_on_is_signed() -> None:
    assert all(entry for entry in tokennote.code_signature())


@pytest.mark.parametrize("env", [
    {"HOME": "/home/u"},
    {"HOME": "/home/u", "XDG_CACHE_HOME": "/var/c"},
    {"HOME": "/home/u", "XDG_CACHE_HOME": "  "},
])
def test_the_note_lives_in_platformdirs_cache_dir(env: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = Path(Unix("credsync", appauthor=False).user_cache_dir) / "token-note.json"
    assert note_file(env, "linux") == str(expected)
    mac = Path(MacOS("credsync", appauthor=False).user_cache_dir) / "token-note.json"
    assert note_file(env, "darwin") == str(mac)
    assert platformdirs.user_cache_path("credsync", appauthor=False) == expected.parent


def test_no_note_where_the_cache_dir_is_not_plain() -> None:
    assert note_file({}, "linux") is None
    assert note_file({"HOME": "relative"}, "linux") is None
    assert note_file({"XDG_CACHE_HOME": "rel", "HOME": "/h"}, "linux") == \
        "/h/.cache/credsync/token-note.json"


def test_how_the_config_file_is_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config("a.toml", {}) == ["explicit", str(tmp_path / "a.toml")]
    assert resolve_config("~/a.toml", {"HOME": "/h"})[1] == os.path.expanduser("~/a.toml")
    assert resolve_config(None, {"CREDSYNC_CONFIG": "$X/c.toml"})[0] == "env"
    assert resolve_config(None, {}) == ["default", None]


def test_the_note_holds_no_environment_value(tmp_path: Path, cache: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # F13: a webhook URL (or any CREDSYNC_* value) may carry a secret.
    monkeypatch.setenv("CREDSYNC_NOTIFY__WEBHOOK", "https://h.invalid/S3CRET")
    path = setup(tmp_path)
    token = full_token(path)
    assert cache.is_file() and "S3CRET" not in cache.read_text()
    assert lookup(str(path)) == token  # the digest still tells a change apart
    monkeypatch.setenv("CREDSYNC_NOTIFY__WEBHOOK", "https://h.invalid/OTHER")
    assert lookup(str(path)) is None


def test_dollar_is_literal_in_an_explicit_config_path(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # F9: --config is a path the shell already expanded; both sides take it literally.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("X", "/elsewhere")
    assert resolve_config("$X/c.toml", {}) == ["explicit", str(tmp_path / "$X" / "c.toml")]
    assert config_path(Path("$X/c.toml"), {}) == tmp_path / "$X" / "c.toml"
    assert resolve_config(None, {"CREDSYNC_CONFIG": "$X/c.toml"}) == ["env", "/elsewhere/c.toml"]
    assert config_path(None, {"CREDSYNC_CONFIG": "$X/c.toml", "X": "/elsewhere"}) == \
        Path("/elsewhere/c.toml")
