"""One contract for the Store interface, run against every implementation.

Subjects: the CLI's credential file, the cache-file sink in each format, the keychain store on
an in-memory keyring, the keychain store on a real gnome-keyring (integration), through
keyring's Secret Service backend and through credsync's kept-connection one, Claude Code's
own macOS Keychain item through the ``security`` double (another writer seeds it as the CLI
would: an item the CLI's ``security`` owns, readable by credsync), and the Windows store on
the Credential Manager double (seeded as the CLI writes its item); and the Codex CLI's stores:
its ``auth.json``, its keyring item on an in-memory keyring and on a real gnome-keyring (in
keyring-rs's scheme), and the ``auto`` store on both. A Codex subject is written Codex logins
(``Subject.cred``): a Claude credential is not one.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from keyring.backends import SecretService

from agent.credential import Credential, ReadState
from agent.errors import StoreError
from agent.fsutil import stat_signature
from agent.sim.claude_credman import ClaudeCredman
from agent.sim.credman import CredmanDouble
from agent.sim.security import SecurityDouble
from agent.stores.base import Store
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.codex_auto import CodexAutoStore
from agent.stores.codex_file import CodexFileStore
from agent.stores.codex_keyring import CodexKeyringStore
from agent.stores.keychain import KeychainBackend, KeychainCalls, KeychainStore, MemoryKeyring
from agent.stores.macos.identity import ClaudeEnv, identity
from agent.stores.macos.security import SecurityTool
from agent.stores.macos.store import MacKeychainStore, WriteRecords
from agent.stores.secretservice import SecretServiceKeyring
from agent.stores.sink import SinkStore
from agent.stores.windows.identity import identity as credman_identity
from agent.stores.windows.store import WindowsCredmanStore
from tests.codexkit import codex_cred
from tests.realkeyring import real_keyring_fixture  # noqa: F401

BASE_MS = 1_900_000_000_000
OTHER_KEYS: dict[str, Any] = {
    "mcpOAuth": {"server|abc": {"accessToken": "mcp-secret", "expiresAt": 5}},
    "someFutureKey": [1, 2.5, None, True, "x"],
}


def cred(n: int, **extra: Any) -> Credential:
    return Credential.build(f"at-{n}", f"rt-{n}", BASE_MS + n * 3_600_000,
                            scopes=["user:inference"], **extra)


class CountingBackend:
    """Counts the writes that reach the keychain."""

    def __init__(self, inner: KeychainBackend) -> None:
        self.inner = inner
        self.sets = 0

    def get_password(self, service: str, username: str) -> str | None:
        return self.inner.get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        self.sets += 1
        self.inner.set_password(service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        self.inner.delete_password(service, username)


@dataclass
class Subject:
    store: Store
    footprint: Callable[[], object]  # changes whenever the store is physically written
    raw: Callable[[], str | None]  # the stored bytes/secret, as text
    seed: Callable[[str], None]  # put a raw document there, as another writer would
    token_only: bool = False  # a sink holds only the access token
    file: Path | None = None
    documents: bool = True  # holds the CLI's whole JSON document
    cred: Callable[[int], Credential] = cred  # login number n (later n: fresher)


def _file_subject(store: Store, path: Path, token_only: bool, documents: bool) -> Subject:
    def raw() -> str | None:
        return path.read_text() if path.exists() else None

    def seed(text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    return Subject(store, lambda: stat_signature(path), raw, seed, token_only, path, documents)


def _keychain_subject(backend: KeychainBackend) -> Subject:
    counting = CountingBackend(backend)
    store = KeychainStore(counting, calls=KeychainCalls(timeout_s=5.0))
    return Subject(store, lambda: counting.sets,
                   lambda: backend.get_password(store.service, store.account),
                   lambda text: backend.set_password(store.service, store.account, text))


def _macos_subject(tmp_path: Path) -> Subject:
    double = SecurityDouble(tmp_path / "keychain")
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)  # the CLI's storage dir: its write lock lives there
    ident = identity(ClaudeEnv(user="alice"), home)
    store = MacKeychainStore(ident, SecurityTool(double.executable), config_dir=home / ".claude",
                             records=WriteRecords(tmp_path / "keychain-writes.json"))

    def writes() -> int:  # every command that can change an item (a -i line is recorded too)
        return sum(1 for argv in double.calls() if argv and argv[0] in (
            "-i", "add-generic-password", "delete-generic-password"))

    def raw() -> str | None:
        item = double.item(ident.service, ident.account)
        return item.secret.decode() if item is not None else None

    return Subject(store, writes, raw,
                   lambda text: double.put(ident.service, ident.account, text))


def _credman_subject(tmp_path: Path) -> Subject:
    # Credential Manager on: the item when there is one, else the CLI's fallback file.
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    vault = CredmanDouble()
    ident = credman_identity(ClaudeEnv(), home)
    file = ClaudeFileStore(ident.storage_dir)
    store = WindowsCredmanStore(ident, vault, file, lambda: True, lock_timeout_s=0.5)
    cli = ClaudeCredman(vault, ident)

    def raw() -> str | None:
        text = cli.raw_text()
        if text is None and file.path.exists():
            return file.path.read_text()
        return text

    return Subject(store, lambda: (vault.calls.writes, stat_signature(file.path)), raw,
                   cli.store_text)


def _codex_keyring_subject(backend: KeychainBackend, home: Path, auto: bool) -> Subject:
    home.mkdir()
    store = CodexKeyringStore(home, backend, calls=KeychainCalls(timeout_s=5.0))
    items = store.backend  # keyring-rs's scheme where the backend has one
    counting = CountingBackend(items)
    store.backend = counting
    if auto:  # no auth.json: the auto store writes the item once there is one
        items.set_password(store.service, store.account, "{}")
        both = CodexAutoStore(CodexFileStore(home), store)
        return Subject(both, lambda: counting.sets,
                       lambda: items.get_password(store.service, store.account),
                       lambda text: items.set_password(store.service, store.account, text),
                       documents=False, cred=codex_cred)
    return Subject(store, lambda: counting.sets,
                   lambda: items.get_password(store.service, store.account),
                   lambda text: items.set_password(store.service, store.account, text),
                   documents=False, cred=codex_cred)


def _codex_subject(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Subject:
    if kind == "codex-file":
        home = tmp_path / "codex-home"
        home.mkdir()
        store = CodexFileStore(home)
        subject = _file_subject(store, store.path, token_only=False, documents=False)
        subject.cred = codex_cred
        return subject
    if kind.endswith("-memory"):
        return _codex_keyring_subject(MemoryKeyring(), tmp_path / "codex-home",
                                      auto=kind.startswith("codex-auto"))
    request.getfixturevalue("real_keyring")
    kept = SecretServiceKeyring()
    request.addfinalizer(kept.close)
    return _codex_keyring_subject(kept, tmp_path / "codex-home", auto=False)


def _build(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Subject:
    if kind.startswith("codex-"):
        return _codex_subject(kind, tmp_path, request)
    if kind == "credman-sim":
        return _credman_subject(tmp_path)
    if kind == "claude-file":
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        store = ClaudeFileStore(config_dir)
        return _file_subject(store, store.path, token_only=False, documents=True)
    if kind.startswith("sink-"):
        fmt = kind.removeprefix("sink-")
        path = tmp_path / "cache" / "session" / f"token.{fmt}"  # parent does not exist yet
        return _file_subject(SinkStore(path, fmt), path, token_only=fmt != "claude",
                             documents=fmt == "claude")
    if kind == "keychain-memory":
        return _keychain_subject(MemoryKeyring())
    if kind == "keychain-macos":
        return _macos_subject(tmp_path)
    request.getfixturevalue("real_keyring")
    if kind == "keychain-kept":
        kept = SecretServiceKeyring()
        request.addfinalizer(kept.close)  # runs before the keyring fixture stops the daemon
        return _keychain_subject(kept)
    return _keychain_subject(SecretService.Keyring())  # type: ignore[no-untyped-call]


REAL_KEYCHAINS = [pytest.param(kind, marks=pytest.mark.integration)
                  for kind in ("keychain-real", "keychain-kept")]
CODEX = ["codex-file", "codex-keyring-memory", "codex-auto-memory",
         pytest.param("codex-keyring-kept", marks=pytest.mark.integration)]
ALL = [
    "claude-file", "sink-claude", "sink-access-token", "sink-env", "sink-json",
    "keychain-memory", "keychain-macos", "credman-sim", *REAL_KEYCHAINS, *CODEX,
]
FILES = ["claude-file", "sink-claude", "sink-access-token", "sink-env", "sink-json",
         "codex-file"]
# The Claude Code document (claudeAiOauth); Codex's are in tests/test_codex_stores.py.
DOCUMENTS = ["claude-file", "sink-claude", "keychain-memory", "keychain-macos", "credman-sim",
             *REAL_KEYCHAINS]
SOURCES = ["claude-file", "keychain-memory", "keychain-macos", "credman-sim", *REAL_KEYCHAINS,
           *CODEX]
POLLED = ("keychain", "codex-keyring")  # nobody can watch them


@pytest.fixture
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    built = _build(request.param, tmp_path, request)
    yield built
    if isinstance(built.store, (KeychainStore, CodexKeyringStore, CodexAutoStore)):
        built.store.close()


def _same_credential(subject: Subject, got: Credential | None, want: Credential) -> None:
    assert got is not None
    assert got.access_token == want.access_token
    if not subject.token_only:
        assert got.same_tokens(want)


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_empty_store_reads_missing(subject: Subject) -> None:
    reading = subject.store.read()
    assert reading.state is ReadState.MISSING
    assert reading.credential is None


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_write_then_read_gives_the_credential(subject: Subject) -> None:
    assert subject.store.write(subject.cred(1)) is True
    reading = subject.store.read()
    assert reading.state is ReadState.VALID
    _same_credential(subject, reading.credential, subject.cred(1))


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_writing_the_same_credential_again_writes_nothing(subject: Subject) -> None:
    assert subject.store.write(subject.cred(1)) is True
    before, content = subject.footprint(), subject.raw()
    assert subject.store.write(subject.cred(1)) is False
    assert subject.footprint() == before  # same inode and mtime / no set_password call
    assert subject.raw() == content


BLANKS = [
    Credential.build("", "", 0),
    Credential.build("at-x", "", BASE_MS),
    Credential.build("", "rt-x", BASE_MS),
    Credential.build("at-x", "rt-x", 0),
]


@pytest.mark.parametrize("blank", BLANKS, ids=["cleared", "no-refresh", "no-access", "no-expiry"])
@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_blank_credential_is_refused_and_nothing_changes(subject: Subject,
                                                         blank: Credential) -> None:
    with pytest.raises(StoreError):
        subject.store.write(blank)
    assert subject.store.read().state is ReadState.MISSING
    subject.store.write(subject.cred(1))
    before, content = subject.footprint(), subject.raw()
    with pytest.raises(StoreError):
        subject.store.write(blank)
    assert (subject.footprint(), subject.raw()) == (before, content)
    _same_credential(subject, subject.store.read().valid, subject.cred(1))


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_a_fresher_credential_replaces_an_older_one(subject: Subject) -> None:
    subject.store.write(subject.cred(1))
    assert subject.store.write(subject.cred(2)) is True
    _same_credential(subject, subject.store.read().valid, subject.cred(2))


@pytest.mark.parametrize("subject", SOURCES, indirect=True)
def test_a_source_never_goes_backwards(subject: Subject) -> None:
    subject.store.write(subject.cred(2))
    before = subject.footprint()
    assert subject.store.write(subject.cred(1)) is False
    assert subject.footprint() == before
    _same_credential(subject, subject.store.read().valid, subject.cred(2))


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("subject", FILES, indirect=True)
def test_files_are_private_whatever_the_umask(subject: Subject) -> None:
    assert subject.file is not None
    with umask(0):
        subject.store.write(subject.cred(1))
        assert stat.S_IMODE(subject.file.stat().st_mode) == 0o600
        subject.store.write(subject.cred(2))  # a rewrite too
    assert stat.S_IMODE(subject.file.stat().st_mode) == 0o600
    if isinstance(subject.store, SinkStore):
        assert stat.S_IMODE(subject.file.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(subject.file.parent.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("subject", DOCUMENTS, indirect=True)
def test_unknown_keys_of_the_document_are_kept(subject: Subject) -> None:
    subject.seed(json.dumps({"claudeAiOauth": subject.cred(1).to_json_obj(), **OTHER_KEYS}))
    assert subject.store.write(subject.cred(2)) is True
    text = subject.raw()
    assert text is not None
    doc = json.loads(text)
    assert doc == {"claudeAiOauth": subject.cred(2).to_json_obj(), **OTHER_KEYS}


@pytest.mark.parametrize("subject", DOCUMENTS, indirect=True)
def test_garbage_reads_invalid_and_is_replaced_whole(subject: Subject) -> None:
    subject.seed('{"claudeAiOauth": {"accessToken": "at-')
    assert subject.store.read().state is ReadState.INVALID
    assert subject.store.write(subject.cred(1)) is True
    _same_credential(subject, subject.store.read().valid, subject.cred(1))


@pytest.mark.parametrize("subject", DOCUMENTS, indirect=True)
def test_cleared_form_reads_cleared_and_is_restored(subject: Subject) -> None:
    subject.seed(json.dumps({"claudeAiOauth": {"accessToken": "", "refreshToken": "",
                                               "expiresAt": 0}, **OTHER_KEYS}))
    assert subject.store.read().state is ReadState.CLEARED
    assert subject.store.write(subject.cred(1)) is True
    _same_credential(subject, subject.store.read().valid, subject.cred(1))


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_the_store_describes_itself(subject: Subject) -> None:
    store = subject.store
    assert store.name and store.location
    assert store.kind in ("claude-file", "sink", "keychain", "codex-file", "codex-keyring",
                          "codex-auto")
    assert store.is_source is (store.kind != "sink")
    assert (store.watch_path is None) is (store.kind in POLLED)
    if store.kind in ("codex-keyring", "codex-auto"):
        assert store.poll_s is not None  # a keyring item is polled
