"""The keychain store: the real Secret Service, an absent or dying one, a stuck one, the
backend allow-list, and the macOS naming rule."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring.errors
import pytest
from keyring.backends import SecretService, chainer, fail, null

from agent.clock import FakeClock
from agent.credential import Credential, ReadState
from agent.errors import KeychainUnavailable, StoreError
from agent.ledger import scope_key
from agent.stores import keychain
from agent.stores.keychain import (
    BlockingKeyring,
    KeychainBackend,
    KeychainCalls,
    KeychainStore,
    MemoryKeyring,
    UnavailableBackend,
    backend_or_unavailable,
    check_backend,
    keychain_stores,
    system_backend,
)
from agent.stores.secretservice import SecretServiceKeyring
from tests.realkeyring import (  # noqa: F401
    RealKeyring,
    environ_overlay,
    no_keyring_bus_fixture,
    private_keyring,
    real_keyring_fixture,
)

BASE_MS = (int(time.time()) + 6 * 3600) * 1000  # a real login: expires within a day
FAST_S = 2.0  # a failure must come at once, not after a hang


def cred(n: int) -> Credential:
    return Credential.build(f"at-{n}", f"rt-{n}", BASE_MS + n * 3_600_000,
                            scopes=["user:inference"], subscriptionType="max")


def secret_service() -> Any:
    return SecretService.Keyring()  # type: ignore[no-untyped-call]


@pytest.fixture
def calls() -> Iterator[KeychainCalls]:
    worker = KeychainCalls(timeout_s=5.0)
    yield worker
    worker.close()


# Both Secret Service backends: keyring's (a connection per call) and credsync's kept one. They
# must behave the same, so every real-daemon test runs against each.
SECRET_SERVICE_KINDS = ["keyring", "kept"]


def make_secret_service(kind: str) -> KeychainBackend:
    return secret_service() if kind == "keyring" else SecretServiceKeyring()


@pytest.fixture(params=SECRET_SERVICE_KINDS)
def backend(request: pytest.FixtureRequest) -> Iterator[KeychainBackend]:
    built = make_secret_service(request.param)
    yield built
    if isinstance(built, SecretServiceKeyring):
        built.close()


@pytest.fixture
def kept() -> Iterator[SecretServiceKeyring]:
    built = SecretServiceKeyring()
    yield built
    built.close()


def search_all(keyring: RealKeyring, service: str,
               username: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """What ``secret-tool`` finds for keyring's attributes: each item's label and secret (from
    stdout), and the attributes (printed to stderr with no item marker, so merged: read them
    when there is one item)."""
    out = subprocess.run(["secret-tool", "search", "--all", "service", service,
                          "username", username], env=keyring.env, capture_output=True,
                         timeout=10, check=True)
    items: list[dict[str, str]] = []
    for line in out.stdout.decode().splitlines():
        if line.startswith("["):
            items.append({})
        elif " = " in line and items:
            key, _, value = line.partition(" = ")
            items[-1][key] = value
    attributes = dict(line.removeprefix("attribute.").partition(" = ")[::2]
                      for line in out.stderr.decode().splitlines() if " = " in line)
    return items, attributes


# --- the real Secret Service, checked with secret-tool -----------------------------------------

@pytest.mark.integration
def test_what_the_store_writes_is_what_secret_tool_sees(real_keyring: RealKeyring,
                                                        backend: KeychainBackend,
                                                        calls: KeychainCalls) -> None:
    [store] = keychain_stores([Path.home() / ".claude"], backend, calls=calls)
    assert store.write(cred(1)) is True
    seen = real_keyring.lookup("credsync", "claude-code")  # the default dir's plain name
    assert seen is not None
    assert json.loads(seen) == {"claudeAiOauth": cred(1).to_json_obj()}
    assert store.write(cred(2)) is True  # replaced, not added
    [item], attributes = search_all(real_keyring, "credsync", "claude-code")
    # keyring's label and attributes, whichever backend wrote the item
    assert item["label"] == "Password for 'claude-code' on 'credsync'"
    assert attributes == {"application": "Python keyring library", "service": "credsync",
                          "username": "claude-code"}
    assert json.loads(item["secret"])["claudeAiOauth"] == cred(2).to_json_obj()


@pytest.mark.integration
def test_an_item_written_by_another_program_is_read(real_keyring: RealKeyring,
                                                    backend: KeychainBackend,
                                                    calls: KeychainCalls) -> None:
    doc = {"claudeAiOauth": cred(3).to_json_obj(), "mcpOAuth": {"k": "v"}}
    real_keyring.store("credsync", "claude-code", json.dumps(doc))
    store = KeychainStore(backend, calls=calls)
    reading = store.read()
    assert reading.state is ReadState.VALID
    assert reading.credential is not None and reading.credential.same_tokens(cred(3))
    assert store.write(cred(4)) is True
    seen = real_keyring.lookup("credsync", "claude-code")
    assert seen is not None and json.loads(seen)["mcpOAuth"] == {"k": "v"}


@pytest.mark.integration
def test_deleting_a_missing_item_is_keyrings_error(real_keyring: RealKeyring,
                                                   backend: KeychainBackend) -> None:
    with pytest.raises(keyring.errors.PasswordDeleteError, match="No such password"):
        backend.delete_password("credsync", "claude-code")
    backend.set_password("credsync", "claude-code", "x")
    backend.delete_password("credsync", "claude-code")
    assert backend.get_password("credsync", "claude-code") is None
    assert real_keyring.lookup("credsync", "claude-code") is None


@pytest.mark.integration
def test_no_secrets_daemon_on_the_bus_is_an_error_not_a_hang(no_keyring_bus: RealKeyring,
                                                             backend: KeychainBackend,
                                                             calls: KeychainCalls) -> None:
    assert not no_keyring_bus.has_owner()
    store = KeychainStore(backend, calls=calls)
    started = time.monotonic()
    reading = store.read()
    assert reading.state is ReadState.ERROR
    assert "org.freedesktop.secrets" in reading.detail or "InitError" in reading.detail
    with pytest.raises(KeychainUnavailable):
        store.write(cred(1))
    assert time.monotonic() - started < FAST_S
    if isinstance(backend, SecretServiceKeyring):
        assert not backend.connected  # the failed connection was closed, not kept


@pytest.mark.integration
def test_no_session_bus_at_all_is_an_error_not_a_hang(tmp_path: Path, backend: KeychainBackend,
                                                      calls: KeychainCalls) -> None:
    nowhere = f"unix:path={tmp_path}/no-such-bus"
    with environ_overlay({"DBUS_SESSION_BUS_ADDRESS": nowhere}):
        store = KeychainStore(backend, calls=calls)
        started = time.monotonic()
        reading = store.read()
        with pytest.raises(KeychainUnavailable) as raised:
            store.write(cred(1))
        assert time.monotonic() - started < FAST_S
    assert reading.state is ReadState.ERROR and reading.detail
    assert raised.value.__cause__ is not None  # mapped with raise ... from


@pytest.mark.integration
def test_the_store_recovers_when_the_daemon_dies_and_comes_back(real_keyring: RealKeyring,
                                                                backend: KeychainBackend,
                                                                calls: KeychainCalls) -> None:
    store = KeychainStore(backend, calls=calls)  # one backend object throughout
    store.write(cred(1))
    real_keyring.stop_daemon()
    gone = store.read()
    assert gone.state is ReadState.ERROR and gone.detail
    with pytest.raises(KeychainUnavailable):
        store.write(cred(2))
    real_keyring.start_daemon()
    back = store.read().valid
    assert back is not None and back.same_tokens(cred(1))  # kept on disk while it was away
    assert store.write(cred(2)) is True
    seen = real_keyring.lookup("credsync", "claude-code")
    assert seen is not None and json.loads(seen)["claudeAiOauth"] == cred(2).to_json_obj()


@pytest.mark.integration
def test_a_locked_collection_is_reported_and_not_written(real_keyring: RealKeyring,
                                                         backend: KeychainBackend,
                                                         calls: KeychainCalls) -> None:
    store = KeychainStore(backend, calls=calls)
    store.write(cred(1))
    real_keyring.lock()
    reading = store.read()
    assert reading.state is ReadState.ERROR
    assert "KeyringLocked" in reading.detail
    with pytest.raises(KeychainUnavailable, match="KeyringLocked"):
        store.write(cred(2))
    real_keyring.stop_daemon()
    real_keyring.start_daemon()  # unlocks the login keyring again
    still = store.read().valid
    assert still is not None and still.same_tokens(cred(1))  # the locked write did not land


# --- the kept connection --------------------------------------------------------------------------

@pytest.mark.integration
def test_the_kept_backend_reuses_one_connection(real_keyring: RealKeyring,
                                                kept: SecretServiceKeyring) -> None:
    assert kept.connections_opened == 0 and not kept.connected  # connects when first called
    kept.set_password("credsync", "claude-code", "v0")
    for n in range(50):
        assert kept.get_password("credsync", "claude-code") == f"v{n}"
        kept.set_password("credsync", "claude-code", f"v{n + 1}")
    kept.delete_password("credsync", "claude-code")
    assert kept.get_password("credsync", "claude-code") is None
    assert kept.connections_opened == 1
    kept.close()
    assert not kept.connected
    assert kept.get_password("credsync", "claude-code") is None  # reconnects after close()
    assert kept.connections_opened == 2


@pytest.mark.integration
def test_keyrings_class_and_the_kept_backend_share_items(real_keyring: RealKeyring,
                                                         kept: SecretServiceKeyring) -> None:
    theirs = secret_service()
    kept.set_password("credsync", "claude-code", "from-kept")
    assert theirs.get_password("credsync", "claude-code") == "from-kept"
    theirs.set_password("credsync", "claude-code", "from-keyring")
    assert kept.get_password("credsync", "claude-code") == "from-keyring"
    kept.set_password("credsync", "claude-code", "again-kept")  # replaces keyring's item
    assert len(search_all(real_keyring, "credsync", "claude-code")[0]) == 1
    assert theirs.get_password("credsync", "claude-code") == "again-kept"
    theirs.delete_password("credsync", "claude-code")
    assert kept.get_password("credsync", "claude-code") is None
    kept.set_password("other", "acct", "é ✓")  # not ASCII: both encode UTF-8
    assert theirs.get_password("other", "acct") == "é ✓"
    kept.delete_password("other", "acct")
    assert theirs.get_password("other", "acct") is None


@pytest.mark.integration
def test_a_restarted_daemon_is_reconnected_to_within_the_same_call(
        real_keyring: RealKeyring, kept: SecretServiceKeyring) -> None:
    kept.set_password("credsync", "claude-code", "before")
    real_keyring.stop_daemon()
    real_keyring.start_daemon()  # no call in between: the kept session belongs to the old one
    assert kept.get_password("credsync", "claude-code") == "before"
    kept.set_password("credsync", "claude-code", "after")
    assert real_keyring.lookup("credsync", "claude-code") == "after"
    assert kept.connections_opened == 2


@pytest.mark.integration
def test_a_locked_collection_is_an_answer_not_a_reason_to_reconnect(
        real_keyring: RealKeyring, kept: SecretServiceKeyring) -> None:
    kept.set_password("credsync", "claude-code", "x")
    real_keyring.lock()
    for _ in range(3):
        with pytest.raises(keyring.errors.KeyringLocked, match="Failed to unlock"):
            kept.get_password("credsync", "claude-code")
    # A retry on a new connection would show a dismissed unlock prompt a second time.
    assert kept.connections_opened == 1 and kept.connected


@pytest.mark.integration
def test_a_failed_connection_is_closed_at_once(no_keyring_bus: RealKeyring,
                                               kept: SecretServiceKeyring) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    # The errors are kept, and with them their tracebacks' frames: a connection left to the
    # garbage collector would stay open.
    errors = []
    for _ in range(10):
        with pytest.raises(keyring.errors.InitError, match=r"org\.freedesktop\.secrets") as raised:
            kept.get_password("credsync", "claude-code")
        errors.append(raised)
    assert kept.connections_opened == 10 and not kept.connected
    assert open_fds() <= before + 2  # each connection left open would hold a socket and more


@pytest.mark.integration
def test_an_item_that_is_not_utf8_is_an_error_not_a_reconnect(
        real_keyring: RealKeyring, kept: SecretServiceKeyring) -> None:
    kept.set_password("credsync", "claude-code", "x")
    subprocess.run(["secret-tool", "store", "--label=raw", "service", "credsync",
                    "username", "claude-code", "application", "Python keyring library"],
                   input=b"\xff\xfe garbage", env=real_keyring.env, capture_output=True,
                   timeout=10, check=True)
    with pytest.raises(UnicodeDecodeError):  # as keyring's class does
        kept.get_password("credsync", "claude-code")
    assert kept.connections_opened == 1


@pytest.mark.integration
def test_a_changed_bus_address_means_a_new_connection(real_keyring: RealKeyring,
                                                      kept: SecretServiceKeyring) -> None:
    kept.set_password("credsync", "claude-code", "on-a")
    with private_keyring() as other:
        assert other.address != real_keyring.address
        assert kept.get_password("credsync", "claude-code") is None  # B's keychain is empty
        kept.set_password("credsync", "claude-code", "on-b")
        assert other.lookup("credsync", "claude-code") == "on-b"
        assert kept.connections_opened == 2
    assert kept.get_password("credsync", "claude-code") == "on-a"  # back on A: A's item
    assert real_keyring.lookup("credsync", "claude-code") == "on-a"
    assert kept.connections_opened == 3


@pytest.mark.integration
def test_the_fixture_leaves_no_process_behind() -> None:
    with private_keyring() as keyring:
        procs = keyring.processes()
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)


# --- a keychain stuck on an unlock prompt -------------------------------------------------------

def test_a_stuck_backend_fails_within_the_deadline_and_then_fast() -> None:
    backend = BlockingKeyring()
    worker = KeychainCalls(timeout_s=0.3)
    store = KeychainStore(backend, calls=worker)
    try:
        started = time.monotonic()
        reading = store.read()
        took = time.monotonic() - started
        assert reading.state is ReadState.ERROR and "0.3 s" in reading.detail
        assert 0.3 <= took < 0.3 + 0.5
        started = time.monotonic()
        with pytest.raises(KeychainUnavailable, match="earlier call"):
            store.write(cred(1))  # does not queue behind the stuck call
        assert time.monotonic() - started < 0.25  # well under the 0.3 s it would queue for
        assert store.read().state is ReadState.ERROR
    finally:
        backend.release()
    deadline = time.monotonic() + 5
    while store.read().state is ReadState.ERROR:  # the stuck call returns, the worker is free
        assert time.monotonic() < deadline
    assert store.write(cred(1)) is True
    assert store.read().state is ReadState.VALID
    worker.close()


def test_a_call_started_late_counts_as_stuck_from_its_submission() -> None:
    # On a loaded machine the worker can start a call well after it was submitted. Its caller's
    # deadline counts from the submission, so the next call must fail fast once that deadline
    # has passed, not queue behind it for another full timeout (a CI run saw exactly that).
    clock = FakeClock()
    worker = KeychainCalls(timeout_s=0.3, clock=clock)
    first_gate, second_gate = threading.Event(), threading.Event()
    second_started = threading.Event()

    def second() -> None:
        second_started.set()
        second_gate.wait()

    try:
        worker.submit(first_gate.wait, "read")
        pending = worker.submit(second, "read")  # submitted at 0, queued behind the first
        clock.advance(0.2)
        first_gate.set()  # the worker starts the second call only now
        assert second_started.wait(timeout=5)
        clock.advance(0.11)  # past the second call's deadline, 0.11 s after it started
        with pytest.raises(KeychainUnavailable, match=r"keychain read: no answer within 0\.3 s"):
            pending.result()
        with pytest.raises(KeychainUnavailable, match=r"earlier call has not returned for 0\.3 s"):
            worker.submit(lambda: None, "write")
    finally:
        second_gate.set()
        worker.close()


def test_a_queued_call_whose_caller_gave_up_never_runs() -> None:
    # A write reported as failed must not land later, when the stuck call ahead of it returns.
    clock = FakeClock()
    worker = KeychainCalls(timeout_s=2, clock=clock)
    gate, ran = threading.Event(), threading.Event()
    try:
        worker.submit(gate.wait, "read")
        pending = worker.submit(ran.set, "write")
        clock.advance(2.01)
        with pytest.raises(KeychainUnavailable, match="no answer within 2 s"):
            pending.result()
        gate.set()
        deadline = time.monotonic() + 5
        while True:  # until the stuck read has returned and the worker takes calls again
            try:
                done = worker.submit(lambda: "free", "read")
                break
            except KeychainUnavailable:
                assert time.monotonic() < deadline
        assert done.result() == "free"  # queued after the cancelled write: its turn has passed
        assert not ran.is_set()
    finally:
        gate.set()
        worker.close()


def test_close_stops_the_worker_thread() -> None:
    worker = KeychainCalls(timeout_s=1)
    store = KeychainStore(MemoryKeyring(), calls=worker)
    assert not worker.running  # started by the first call, not before
    store.write(cred(1))
    assert worker.running
    store.close()
    assert not worker.running
    assert store.read().state is ReadState.ERROR  # closed: an error, not a hang


class RaisingBackend(MemoryKeyring):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def get_password(self, service: str, username: str) -> str | None:
        raise self.exc


@pytest.mark.parametrize("exc", [RuntimeError("no bus"), OSError(111, "Connection refused"),
                                 ValueError("bad address")])
def test_every_backend_error_becomes_keychain_unavailable(exc: Exception,
                                                         calls: KeychainCalls) -> None:
    store = KeychainStore(RaisingBackend(exc), calls=calls)
    assert store.read().state is ReadState.ERROR
    with pytest.raises(KeychainUnavailable) as raised:
        store.write(cred(1))
    assert raised.value.__cause__ is exc


# --- what a write does --------------------------------------------------------------------------

def test_a_write_compares_first_and_merges(calls: KeychainCalls) -> None:
    backend = MemoryKeyring()
    store = KeychainStore(backend, "svc", "acct", calls=calls)
    backend.set_password("svc", "acct", json.dumps({"claudeAiOauth": cred(1).to_json_obj(),
                                                    "other": {"a": 1}}))
    assert store.write(cred(1)) is False
    assert store.write(cred(2)) is True
    assert json.loads(backend.items[("svc", "acct")]) == {
        "claudeAiOauth": cred(2).to_json_obj(), "other": {"a": 1}}
    with pytest.raises(StoreError):
        store.write(Credential.build("", "", 0))
    assert store.delete() is True and store.delete() is False
    assert store.read().state is ReadState.MISSING


# --- the allow-list -----------------------------------------------------------------------------

class PlaintextKeyring:
    """Like keyrings.alt's file backend: a secret in a plain file (not a KeyringBackend
    subclass, so that keyring's registry of backends stays untouched)."""

    def get_password(self, service: str, username: str) -> str | None:
        return None

    def set_password(self, service: str, username: str, password: str) -> None: ...

    def delete_password(self, service: str, username: str) -> None: ...


@pytest.mark.parametrize("backend", [fail.Keyring(), null.Keyring(),  # type: ignore[no-untyped-call]
                                     PlaintextKeyring(), MemoryKeyring()],
                         ids=["fail", "null", "plaintext", "memory"])
def test_the_allow_list_rejects_what_is_not_a_keychain(backend: object) -> None:
    with pytest.raises(KeychainUnavailable, match="not an OS keychain"):
        check_backend(backend)


def test_the_allow_list_takes_the_real_keychains() -> None:
    check_backend(secret_service())
    check_backend(SecretServiceKeyring())
    for platform, name in [("linux", "secretservice.SecretServiceKeyring"),
                           ("darwin", "macOS.Keyring"), ("win32", "Windows.WinVaultKeyring")]:
        backend = system_backend(platform=platform, env={})
        assert f"{type(backend).__module__}.{type(backend).__qualname__}".endswith(name)


def test_keyrings_secret_service_is_swapped_for_the_kept_one() -> None:
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring"}
    assert isinstance(system_backend(platform="linux", env=env), SecretServiceKeyring)
    assert isinstance(system_backend(platform="linux", env={}), SecretServiceKeyring)


@pytest.mark.parametrize("name", ["keyrings.alt.file.PlaintextKeyring",
                                  "keyring.backends.fail.Keyring", "no.such.Backend"])
def test_a_configured_backend_outside_the_list_is_refused(name: str) -> None:
    with pytest.raises(KeychainUnavailable, match="not an OS keychain"):
        system_backend(platform="linux", env={"PYTHON_KEYRING_BACKEND": name})


def test_an_unusable_keychain_still_gives_a_store_that_says_why(calls: KeychainCalls) -> None:
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    backend = backend_or_unavailable(platform="linux", env=env)
    assert isinstance(backend, UnavailableBackend)
    store = KeychainStore(backend, calls=calls)
    reading = store.read()
    assert reading.state is ReadState.ERROR and "not an OS keychain" in reading.detail
    with pytest.raises(KeychainUnavailable, match="not an OS keychain"):
        store.write(cred(1))
    assert not isinstance(backend_or_unavailable(platform="linux", env={}), UnavailableBackend)


def test_the_public_surface_is_listed() -> None:
    assert sorted(keychain.__all__) == sorted(set(keychain.__all__))
    assert all(hasattr(keychain, name) for name in keychain.__all__)


def test_a_chainer_passes_only_when_all_its_members_do() -> None:
    def chain(*members: object) -> object:
        # Defined per call: keyring's chainer discovers its members through a class property.
        cls = type("FixedChainer", (chainer.ChainerBackend,),
                   {"priority": -1, "backends": list(members)})
        return cls()

    check_backend(chain(secret_service()))
    with pytest.raises(KeychainUnavailable):
        check_backend(chain(secret_service(), PlaintextKeyring()))
    with pytest.raises(KeychainUnavailable):
        check_backend(chain())


# --- which item ---------------------------------------------------------------------------------

HOME = Path("/Users/ann")


def test_elsewhere_one_item_of_credsyncs_own(calls: KeychainCalls) -> None:
    stores = keychain_stores([HOME / "a", HOME / "b"], MemoryKeyring(), home=HOME, calls=calls)
    # one item per set of config dirs: two logins never share a copy (F2)
    assert [(s.name, s.service, s.account) for s in stores] == [
        ("keychain", "credsync", f"claude-code/{scope_key([HOME / 'a', HOME / 'b'])}")]
    [default] = keychain_stores([HOME / ".claude"], MemoryKeyring(), home=HOME, calls=calls)
    assert default.account == "claude-code"


def test_a_started_write_runs_while_the_caller_goes_on() -> None:
    backend = BlockingKeyring()
    worker = KeychainCalls(timeout_s=5.0)
    store = KeychainStore(backend, calls=worker)
    try:
        started = time.monotonic()
        read = store.start_read()
        finish = store.start_write(cred(1))  # queued behind the read, not refused
        assert time.monotonic() - started < 1.0  # neither waited 5 s for the stuck backend
        assert backend.entered.wait(5)
        backend.release()
        assert read().state is ReadState.MISSING
        assert finish() is True
        assert store.read().valid == cred(1)
    finally:
        backend.release()
        worker.close()


def test_a_started_call_keeps_the_deadline_of_its_start() -> None:
    backend = BlockingKeyring()
    clock = FakeClock()
    worker = KeychainCalls(timeout_s=3, clock=clock)
    store = KeychainStore(backend, calls=worker)
    try:
        finish = store.start_write(cred(1))
        clock.advance(3.5)  # the caller did other work for longer than the deadline
        started = time.monotonic()
        with pytest.raises(KeychainUnavailable, match=r"3 s"):
            finish()
        assert time.monotonic() - started < 1.0  # already past its deadline: no new 3 s wait
    finally:
        backend.release()
        worker.close()


def test_a_blank_credential_is_refused_before_anything_is_queued() -> None:
    backend = BlockingKeyring()
    worker = KeychainCalls(timeout_s=0.3)
    store = KeychainStore(backend, calls=worker)
    blank = Credential.build("", "", 0)
    with pytest.raises(StoreError, match="blank"):
        store.start_write(blank)
    assert not backend.entered.is_set() and not worker.running
    worker.close()
