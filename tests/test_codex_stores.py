"""The Codex CLI's stores: auth.json under Codex's lock pair, its keyring item, the auto store,
and which store each home uses (``agent.codex.homes``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.codex.homes import HomePlan, Mode, codex_stores, plan_homes, store_mode
from agent.credential import ReadState
from agent.errors import ConfigError, KeychainUnavailable, StoreError
from agent.stores.codex_auto import CodexAutoStore
from agent.stores.codex_file import CodexFileStore
from agent.stores.codex_keyring import SERVICE, CodexKeyringStore, store_key
from agent.stores.keychain import KeychainCalls, MemoryKeyring, UnavailableBackend
from agent.stores.secretservice import SecretServiceKeyring
from tests.codexkit import auth_doc, codex_cred, codex_text
from tests.realkeyring import (
    RealKeyring,
    real_keyring_fixture,  # noqa: F401
)

FUTURE = {"agent_identity": None, "someFutureKey": {"nested": [1, 2.5, None]}}

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
os.close(fd)
print("released", flush=True)
sys.stdin.readline()
"""


class Holder:
    """Another process holding a flock on ``path`` until ``release()``."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "held\n"
        self.released = False

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if not self.released:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline() == "released\n"  # the lock is free now
            self.released = True

    def stop(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def held(path: Path) -> Iterator[Holder]:
    holder = Holder(path)
    try:
        yield holder
    finally:
        holder.stop()


class ReleasingSleep:
    """The lock wait's sleep: counts the waits and frees the holder after ``after`` of them."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls = 0
        self.holder: Holder | None = None

    def __call__(self, seconds: float) -> None:
        self.calls += 1
        if self.calls >= self.after and self.holder is not None:
            self.holder.release()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "codex"
    path.mkdir()
    return path


def seed(home: Path, doc: dict[str, Any]) -> None:
    (home / "auth.json").write_text(codex_text(doc))


def on_disk(home: Path) -> dict[str, Any]:
    return dict(json.loads((home / "auth.json").read_text()))


# --- auth.json --------------------------------------------------------------------------------

def test_a_document_as_codex_writes_it_reads_valid(home: Path) -> None:
    doc = auth_doc(1)
    seed(home, doc)  # pretty, "OPENAI_API_KEY": null, last_refresh with nanoseconds
    reading = CodexFileStore(home).read()
    assert reading.state is ReadState.VALID
    cred = reading.credential
    assert cred is not None and cred.same_tokens(codex_cred(1))
    assert cred.oauth["lastRefresh"] == doc["last_refresh"]
    assert cred.oauth["accountId"] == "acct-1"


def test_a_write_keeps_every_key_and_writes_pretty_json_0600(home: Path) -> None:
    seed(home, auth_doc(1, **FUTURE))
    store = CodexFileStore(home)
    old = os.umask(0)
    try:
        assert store.write(codex_cred(2)) is True
    finally:
        os.umask(old)
    want = auth_doc(2, **FUTURE)
    assert (home / "auth.json").read_text() == json.dumps(want, indent=2)
    assert stat.S_IMODE((home / "auth.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "auth.json.lock").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "auth.lock").stat().st_mode) == 0o666  # as Codex creates it
    assert sorted(p.name for p in home.iterdir()) == ["auth.json", "auth.json.lock",
                                                       "auth.lock"]  # no temp left
    st = (home / "auth.json").stat()
    assert store.written == (st.st_ino, st.st_mtime_ns, st.st_size)


def test_a_write_replaces_the_file_by_rename(home: Path) -> None:
    seed(home, auth_doc(1))
    before = (home / "auth.json").stat().st_ino
    CodexFileStore(home).write(codex_cred(2))
    assert (home / "auth.json").stat().st_ino != before


def test_another_accounts_login_is_never_replaced(home: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    seed(home, auth_doc(1, account="acct-2"))
    text = (home / "auth.json").read_text()
    store = CodexFileStore(home)
    with caplog.at_level(logging.WARNING):
        assert store.write(codex_cred(5)) is False
        assert store.write(codex_cred(5)) is False
    assert (home / "auth.json").read_text() == text
    warnings = [r for r in caplog.records if "across accounts" in r.getMessage()]
    assert len(warnings) == 1  # logged once
    assert "rt-" not in caplog.text and codex_cred(5).access_token not in caplog.text


def test_another_user_of_the_same_account_is_never_replaced(home: Path) -> None:
    seed(home, auth_doc(1, user="user-2"))
    assert CodexFileStore(home).write(codex_cred(5)) is False


def test_never_backwards_unless_it_supersedes_what_is_there(home: Path) -> None:
    seed(home, auth_doc(3))
    store = CodexFileStore(home)
    assert store.write(codex_cred(2)) is False
    assert on_disk(home) == auth_doc(3)
    assert store.write(codex_cred(2), supersedes=codex_cred(3)) is True
    assert on_disk(home) == auth_doc(2)


def test_garbage_reads_invalid_and_is_replaced_whole(home: Path) -> None:
    (home / "auth.json").write_text('{"tokens": {"access_token": "ey')
    store = CodexFileStore(home)
    assert store.read().state is ReadState.INVALID
    assert store.write(codex_cred(1)) is True
    assert on_disk(home) == {"OPENAI_API_KEY": None, **{k: auth_doc(1)[k]
                                                       for k in ("tokens", "last_refresh")}}


@pytest.mark.parametrize("doc", [
    {"OPENAI_API_KEY": "sk-proj-abc", "tokens": None, "last_refresh": None},
    {"OPENAI_API_KEY": None, "personal_access_token": "pat-1"},
], ids=["api-key", "personal-access-token"])
def test_a_document_without_a_chatgpt_login_is_left_alone(home: Path,
                                                          doc: dict[str, Any]) -> None:
    seed(home, doc)
    text = (home / "auth.json").read_text()
    store = CodexFileStore(home)
    reading = store.read()
    assert reading.state is ReadState.MISSING and "no ChatGPT login" in reading.detail
    assert store.write(codex_cred(1)) is False
    assert (home / "auth.json").read_text() == text


def test_a_deleted_file_reads_missing(home: Path) -> None:
    store = CodexFileStore(home)
    store.write(codex_cred(1))
    (home / "auth.json").unlink()
    assert store.read().state is ReadState.MISSING  # the winner rule calls it a logout


def test_a_blank_credential_is_refused(home: Path) -> None:
    with pytest.raises(StoreError):
        CodexFileStore(home).write(codex_cred(1).__class__({"accessToken": "x"}))


# --- the lock pair ----------------------------------------------------------------------------

def test_a_held_auth_lock_fails_the_write_within_its_deadline(home: Path) -> None:
    seed(home, auth_doc(1))
    waits = ReleasingSleep(after=10**9)
    store = CodexFileStore(home, outer_timeout_s=0.2, sleep=waits)
    with held(home / "auth.lock"), pytest.raises(StoreError, match=r"auth\.lock"):
        store.write(codex_cred(2))
    assert waits.calls > 0
    assert on_disk(home) == auth_doc(1)


def test_the_write_waits_for_auth_lock_then_succeeds(home: Path) -> None:
    seed(home, auth_doc(1))
    waits = ReleasingSleep(after=3)
    store = CodexFileStore(home, outer_timeout_s=30, sleep=waits)
    with held(home / "auth.lock") as holder:
        waits.holder = holder
        assert store.write(codex_cred(2)) is True
    assert waits.calls >= 3
    assert on_disk(home) == auth_doc(2)


def test_a_held_auth_json_lock_is_retried_then_fails(home: Path) -> None:
    seed(home, auth_doc(1))
    waits = ReleasingSleep(after=10**9)
    store = CodexFileStore(home, inner_timeout_s=0.2, sleep=waits)
    with held(home / "auth.json.lock"), pytest.raises(StoreError, match=r"auth\.json\.lock"):
        store.write(codex_cred(2))
    assert waits.calls > 1  # retried, not given up at once
    assert on_disk(home) == auth_doc(1)
    with held(home / "auth.lock"), pytest.raises(StoreError):
        CodexFileStore(home, outer_timeout_s=0).write(codex_cred(2))  # released on failure


def test_a_held_auth_json_lock_is_retried_until_free(home: Path) -> None:
    seed(home, auth_doc(1))
    waits = ReleasingSleep(after=2)
    store = CodexFileStore(home, inner_timeout_s=30, sleep=waits)
    with held(home / "auth.json.lock") as holder:
        waits.holder = holder
        assert store.write(codex_cred(2)) is True
    assert on_disk(home) == auth_doc(2)


def test_both_locks_are_released_after_a_write(home: Path) -> None:
    store = CodexFileStore(home)
    store.write(codex_cred(1))
    with held(home / "auth.lock"), held(home / "auth.json.lock"):
        pass  # another process takes both at once: nothing of ours is held


# --- the keyring item -------------------------------------------------------------------------

def test_the_keyring_account_is_sha256_of_the_canonical_home(tmp_path: Path) -> None:
    real = tmp_path / "real-home"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    want = "cli|" + hashlib.sha256(str(real).encode()).hexdigest()[:16]
    assert store_key(real) == want
    assert store_key(link) == want  # symlinks resolved
    assert store_key(f"{real}/") == want  # no trailing slash
    assert store_key(f"{link}/./") == want
    gone = f"{tmp_path}/missing/"  # canonicalize fails: the path as given
    assert store_key(gone) == "cli|" + hashlib.sha256(gone.encode()).hexdigest()[:16]


def _keyring_store(home: Path, backend: Any) -> CodexKeyringStore:
    return CodexKeyringStore(home, backend, calls=KeychainCalls(timeout_s=5.0))


def test_the_item_is_compact_json_with_every_key_kept(home: Path) -> None:
    ring = MemoryKeyring()
    store = _keyring_store(home, ring)
    ring.set_password(SERVICE, store.account, json.dumps(auth_doc(1, **FUTURE)))
    assert store.read().state is ReadState.VALID
    assert store.write(codex_cred(2)) is True
    text = ring.get_password(SERVICE, store.account)
    assert text == json.dumps(auth_doc(2, **FUTURE), separators=(",", ":"))
    store.close()


def test_the_item_follows_the_same_rules(home: Path) -> None:
    ring = MemoryKeyring()
    store = _keyring_store(home, ring)
    ring.set_password(SERVICE, store.account, json.dumps(auth_doc(3, account="acct-2")))
    assert store.write(codex_cred(5)) is False  # another account
    ring.set_password(SERVICE, store.account, json.dumps(auth_doc(3)))
    assert store.write(codex_cred(2)) is False  # backwards
    ring.set_password(SERVICE, store.account, '{"OPENAI_API_KEY":"sk-1"}')
    assert store.read().state is ReadState.MISSING
    assert store.write(codex_cred(2)) is False  # an API key
    store.close()


def test_the_item_is_polled(home: Path) -> None:
    ring = MemoryKeyring()
    store = _keyring_store(home, ring)
    assert store.watch_path is None and store.poll_s
    store.read()
    assert store.changed() is False
    ring.set_password(SERVICE, store.account, json.dumps(auth_doc(1)))
    assert store.changed() is True
    assert store.changed() is False
    store.write(codex_cred(2))
    assert store.changed() is False  # its own write
    store.close()


def test_an_unusable_keyring_reads_error(home: Path) -> None:
    store = _keyring_store(home, UnavailableBackend("no keyring here"))
    reading = store.read()
    assert reading.state is ReadState.ERROR and "no keyring here" in reading.detail
    with pytest.raises(KeychainUnavailable):
        store.write(codex_cred(1))
    store.close()


def test_a_backend_that_would_write_elsewhere_is_refused(home: Path) -> None:
    class OtherBackend(MemoryKeyring):
        pass

    store = _keyring_store(home, OtherBackend())
    assert store.read().state is ReadState.ERROR
    assert "keyring-rs" in store.read().detail
    store.close()


@pytest.mark.integration
def test_codex_finds_the_item_credsync_writes(home: Path, real_keyring: RealKeyring) -> None:
    kept = SecretServiceKeyring()
    store = _keyring_store(home, kept)
    try:
        assert store.write(codex_cred(1)) is True
        account = store.account
        # keyring-rs's search: service, username and target (secret-tool, as Codex would)
        found = subprocess.run(["secret-tool", "lookup", "service", SERVICE, "username",
                                account, "target", "default"], env=real_keyring.env,
                               capture_output=True, text=True, timeout=10, check=True)
        assert json.loads(found.stdout) == {**auth_doc(1)}
        listing = subprocess.run(["secret-tool", "search", "--all", "service", SERVICE],
                                 env=real_keyring.env, capture_output=True, text=True,
                                 timeout=10, check=True)
        text = listing.stdout + listing.stderr
        assert f"label = {account}@{SERVICE}:default (keyring v3.6.3)" in text
        assert "attribute.application = rust-keyring" in text
        assert store.write(codex_cred(2)) is True  # the same item updated, not a second one
        listing = subprocess.run(["secret-tool", "search", "--all", "service", SERVICE],
                                 env=real_keyring.env, capture_output=True, text=True,
                                 timeout=10, check=True)
        assert (listing.stdout + listing.stderr).count("label = ") == 1
        got = store.read().valid
        assert got is not None and got.same_tokens(codex_cred(2))
    finally:
        store.close()
        kept.close()


# --- auto -------------------------------------------------------------------------------------

def _auto(home: Path, ring: Any) -> CodexAutoStore:
    return CodexAutoStore(CodexFileStore(home), _keyring_store(home, ring))


def test_auto_uses_the_file_while_there_is_no_item(home: Path) -> None:
    ring = MemoryKeyring()
    store = _auto(home, ring)
    seed(home, auth_doc(1))
    assert store.read().state is ReadState.VALID
    assert store.write(codex_cred(2)) is True
    assert on_disk(home) == auth_doc(2)
    assert ring.items == {}  # no item made for Codex
    assert store.written == store.file.written
    store.close()


def test_auto_uses_the_item_when_there_is_one(home: Path) -> None:
    ring = MemoryKeyring()
    store = _auto(home, ring)
    ring.set_password(SERVICE, store.keyring.account, json.dumps(auth_doc(1)))
    assert store.read().valid is not None
    assert store.write(codex_cred(2)) is True
    assert json.loads(ring.get_password(SERVICE, store.keyring.account) or "") == auth_doc(2)
    assert not (home / "auth.json").exists()
    store.close()


def test_auto_with_a_failing_keyring_and_no_file_is_an_error_not_a_logout(home: Path) -> None:
    store = _auto(home, UnavailableBackend("locked"))
    assert store.read().state is ReadState.ERROR
    with pytest.raises(StoreError):
        store.write(codex_cred(1))
    seed(home, auth_doc(1))  # Codex falls back to the file, and so does credsync
    assert store.read().state is ReadState.VALID
    assert store.write(codex_cred(2)) is True
    store.close()


# --- which store per home ---------------------------------------------------------------------

def _config(home: Path, text: str) -> None:
    (home / "config.toml").write_text(text)


@pytest.mark.parametrize(("text", "mode"), [
    (None, Mode.FILE),
    ('model = "o3"\n', Mode.FILE),
    ('cli_auth_credentials_store = "file"\n', Mode.FILE),
    ('cli_auth_credentials_store = "keyring"\n', Mode.KEYRING),
    ('cli_auth_credentials_store = "auto"\n', Mode.AUTO),
    ('cli_auth_credentials_store = "ephemeral"\n', Mode.EPHEMERAL),
])
def test_the_mode_comes_from_config_toml(home: Path, text: str | None, mode: Mode) -> None:
    if text is not None:
        _config(home, text)
    assert store_mode(home) is mode


@pytest.mark.parametrize("text", ['cli_auth_credentials_store = "keyring',
                                  'cli_auth_credentials_store = "vault"\n',
                                  "cli_auth_credentials_store = 1\n"])
def test_a_broken_config_toml_is_a_clear_error_naming_the_file(home: Path, text: str) -> None:
    _config(home, text)
    with pytest.raises(ConfigError) as caught:
        codex_stores([home], None, False)
    assert str(home / "config.toml") in str(caught.value)


def _kinds(plans: list[HomePlan]) -> list[list[str]]:
    return [[s.kind for s in p.stores] for p in plans]


def test_each_mode_gets_its_store(tmp_path: Path) -> None:
    homes = []
    for mode in Mode:
        home = tmp_path / mode.value
        home.mkdir()
        _config(home, f'cli_auth_credentials_store = "{mode.value}"\n')
        homes.append(home)
    plans = plan_homes(homes, MemoryKeyring(), True)
    assert _kinds(plans) == [["codex-file"], ["codex-keyring"], ["codex-auto"], []]
    assert "ephemeral" in plans[3].note
    off = plan_homes(homes, MemoryKeyring(), False)
    assert _kinds(off) == [["codex-file"], [], ["codex-file"], []]
    assert off[1].note and off[2].note
    for plan in plans:
        for store in plan.stores:
            store.close()


def test_codex_stores_lists_them_in_order_and_takes_overrides(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _config(b, 'cli_auth_credentials_store = "ephemeral"\n')
    stores = codex_stores([a, b], MemoryKeyring(), True, modes={b: "keyring"})
    assert [(s.kind, s.name) for s in stores] == [("codex-file", f"codex:{a}"),
                                                  ("codex-keyring", f"codex-keyring:{b}")]
    for store in stores:
        store.close()
