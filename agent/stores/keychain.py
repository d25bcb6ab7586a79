"""The OS keychain, through keyring: the only module that imports it.

Which item: credsync's own copy of the login, service ``credsync``, account ``claude-code``
(``claude-code/<scope>`` for any other set of config dirs), holding the same
``{"claudeAiOauth": {...}}`` document: a last-known-good copy that outlives a cleared or
deleted file. With Secret Service its attributes are ``service=credsync username=claude-code``
(keyring's scheme), which is what ``secret-tool lookup service credsync username claude-code``
finds. Claude Code's own macOS items are never touched through keyring: a keyring write
re-stamps an item to the Python binary and locks the CLI out (``agent.stores.macos``).

On Linux the Secret Service is reached through ``agent.stores.secretservice`` (same items as
keyring's SecretService backend, but one kept D-Bus connection and session instead of a new one
per call); elsewhere through keyring's backends.

Every backend call runs on one worker thread with a deadline: a locked keychain on a desktop can
block forever on an unlock prompt. While an earlier call is still stuck, further calls fail at
once instead of queueing behind it. Every error comes out as ``KeychainUnavailable``.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import keyring.errors
from keyring.backends.chainer import ChainerBackend

from agent.clock import Clock, SystemClock
from agent.credential import (
    Credential,
    Reading,
    ReadState,
    merged_document,
    parse_document,
    render_document,
)
from agent.errors import KeychainUnavailable, StoreError
from agent.ledger import scope_key
from agent.stores.base import Role, Store

__all__ = [
    "ALLOWED_BACKENDS",
    "BlockingKeyring",
    "KeychainBackend",
    "KeychainCalls",
    "KeychainStore",
    "MemoryKeyring",
    "Pending",
    "UnavailableBackend",
    "backend_or_unavailable",
    "check_backend",
    "check_backend_name",
    "keychain_stores",
    "system_backend",
]

OWN_SERVICE = "credsync"
OWN_ACCOUNT = "claude-code"
DEFAULT_TIMEOUT_S = 3.0
# keyring's Secret Service backend connects afresh on every call (~13 ms); where it is chosen,
# credsync's own backend for the same items, which keeps its connection, is used instead.
KEYRING_SECRET_SERVICE = "keyring.backends.SecretService.Keyring"
KEPT_SECRET_SERVICE = "agent.stores.secretservice.SecretServiceKeyring"
# Exact classes only: a subclass could store the secret anywhere (keyrings.alt's plaintext file
# backends are the reason this list exists). libsecret is the Secret Service through libsecret.
ALLOWED_BACKENDS = frozenset({
    "keyring.backends.macOS.Keyring",
    KEYRING_SECRET_SERVICE,
    KEPT_SECRET_SERVICE,
    "keyring.backends.libsecret.Keyring",
    "keyring.backends.Windows.WinVaultKeyring",
})

CHAINER_BACKEND = "keyring.backends.chainer.ChainerBackend"

T = TypeVar("T")


class KeychainBackend(Protocol):
    """What a store needs of a keyring backend (any keyring backend, or a fake)."""

    def get_password(self, service: str, username: str) -> str | None: ...

    def set_password(self, service: str, username: str, password: str) -> None: ...

    def delete_password(self, service: str, username: str) -> None: ...


# --- which backend ---------------------------------------------------------------------------

def _class_name(backend: object) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_backend_name(name: str) -> None:
    """Raise KeychainUnavailable unless ``name`` (module.Class) is a real OS keychain backend."""
    if name not in ALLOWED_BACKENDS:
        raise KeychainUnavailable(
            f"keyring backend {name} is not an OS keychain; credsync uses only the macOS "
            "Keychain, the Secret Service (e.g. gnome-keyring) or the Windows Credential "
            "Locker (check PYTHON_KEYRING_BACKEND)")


def check_backend(backend: object) -> None:
    """Raise KeychainUnavailable unless ``backend`` keeps secrets in a real OS keychain."""
    if isinstance(backend, ChainerBackend):
        members = list(backend.backends)
        if not members:
            raise KeychainUnavailable("keyring's chainer backend holds no keychain backend")
        for member in members:
            check_backend(member)
        return
    check_backend_name(_class_name(backend))


PLATFORM_BACKENDS = {
    "darwin": "keyring.backends.macOS.Keyring",
    "win32": "keyring.backends.Windows.WinVaultKeyring",
}


def _load_backend(qualified: str) -> KeychainBackend:
    # Not keyring.core.load_keyring: it probes the backend's priority, which talks to D-Bus and
    # fails while the keychain is not up yet; the backend connects when called instead.
    module_name, _, class_name = qualified.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend = cast(Callable[[], KeychainBackend], cls)()
    check_backend(backend)
    return backend


def system_backend(
    platform: str = sys.platform, env: Mapping[str, str] | None = None
) -> KeychainBackend:
    """The platform's keychain, or the backend named by PYTHON_KEYRING_BACKEND; only real ones.

    Chosen by platform rather than keyring's priority probe: the probe runs once per process and
    would pin the fail backend for good if the keychain was not up when the agent started.
    keyringrc.cfg is not read. keyring's Secret Service backend is swapped for
    ``SecretServiceKeyring``, which keeps its connection (same items, same errors).
    """
    env = os.environ if env is None else env
    name = env.get("PYTHON_KEYRING_BACKEND") or PLATFORM_BACKENDS.get(
        platform, KEYRING_SECRET_SERVICE)
    if name == KEYRING_SECRET_SERVICE:
        name = KEPT_SECRET_SERVICE
    if name != CHAINER_BACKEND:
        check_backend_name(name)  # before importing it: a plaintext backend is never built
    try:
        return _load_backend(name)
    except KeychainUnavailable:
        raise
    except Exception as exc:  # a bad name, a missing module: any error type
        raise KeychainUnavailable(f"keyring backend {name} cannot be loaded: {exc}") from exc


class UnavailableBackend:
    """Stands in for a keychain that cannot be used, so that its store still shows up in status
    (state error, with the reason) and the agent keeps running."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def get_password(self, service: str, username: str) -> str | None:
        raise KeychainUnavailable(self.reason)

    def set_password(self, service: str, username: str, password: str) -> None:
        raise KeychainUnavailable(self.reason)

    def delete_password(self, service: str, username: str) -> None:
        raise KeychainUnavailable(self.reason)


def backend_or_unavailable(
    platform: str = sys.platform, env: Mapping[str, str] | None = None
) -> KeychainBackend:
    """``system_backend()``, or an UnavailableBackend saying why not."""
    try:
        return system_backend(platform, env)
    except KeychainUnavailable as exc:
        return UnavailableBackend(str(exc))


# --- calls with a deadline -------------------------------------------------------------------

def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class KeychainCalls:
    """One worker thread running backend calls, each with a deadline; shared by the stores of
    one keychain so that a stuck prompt blocks one thread, not one per store.

    ``submit`` queues a call and returns at once (the agent reads and writes the keychain while
    it writes the files: a D-Bus round trip is mostly waiting); ``Pending.result`` waits for it
    until its deadline, counted from the submission. A call submitted while the one running has
    been stuck past its deadline fails at once instead of queueing behind it.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, clock: Clock | None = None) -> None:
        self.timeout_s = timeout_s
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        # Each job keeps its submission time: a caller's deadline counts from it, so "stuck" must
        # too (the worker may start a job late on a loaded machine).
        self._jobs: list[tuple[concurrent.futures.Future[Any], Callable[[], Any], float]] = []
        self._wake = threading.Condition(self._lock)
        self._running: concurrent.futures.Future[Any] | None = None
        self._running_since = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Is the worker thread alive (it starts with the first call)?"""
        return self._thread is not None and self._thread.is_alive()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            # Daemon: a call stuck on an unlock prompt must never keep the process from exiting.
            self._thread = threading.Thread(target=self._run, name="keychain", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._jobs and not self._closed:
                    self._wake.wait()
                if not self._jobs:
                    return
                future, fn, submitted = self._jobs.pop(0)
                if not future.set_running_or_notify_cancel():
                    continue
                self._running, self._running_since = future, submitted
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def submit(self, fn: Callable[[], T], what: str) -> Pending[T]:
        with self._lock:
            if self._closed:
                raise KeychainUnavailable(f"keychain {what}: closed")
            now = self._clock.monotonic()
            stuck = now - self._oldest_unfinished(now)
            if stuck >= self.timeout_s:
                raise KeychainUnavailable(
                    f"keychain {what}: an earlier call has not returned for {stuck:.1f} s "
                    "(locked keychain waiting for an unlock prompt?)")
            future: concurrent.futures.Future[T] = concurrent.futures.Future()
            self._jobs.append((future, fn, now))
            self._ensure_thread()
            self._wake.notify()
        return Pending(future, what, now + self.timeout_s, self.timeout_s, self._clock)

    def _oldest_unfinished(self, now: float) -> float:
        """When the oldest call still ahead of a new one was submitted (``now`` if none): the
        running call, else the head of the queue (the worker may not have picked it up yet)."""
        if self._running is not None and not self._running.done():
            return self._running_since
        return next((at for future, _, at in self._jobs if not future.cancelled()), now)

    def call(self, fn: Callable[[], T], what: str) -> T:
        return self.submit(fn, what).result()

    def close(self) -> None:
        """Stop the worker; a call still stuck in the backend is abandoned (daemon thread)."""
        with self._wake:
            self._closed = True
            for future, _, _ in self._jobs:
                future.cancel()
            self._jobs.clear()
            self._wake.notify()
            thread, running = self._thread, self._running
        if thread is not None and (running is None or running.done()):
            thread.join(timeout=2)


class Pending(Generic[T]):
    """A submitted keychain call: ``result()`` waits until its deadline; every error comes out
    as KeychainUnavailable."""

    def __init__(self, future: concurrent.futures.Future[T], what: str, deadline: float,
                 timeout_s: float, clock: Clock) -> None:
        self._future = future
        self._clock = clock
        self._what = what
        self._deadline = deadline
        self._timeout_s = timeout_s

    def result(self) -> T:
        try:
            return self._future.result(timeout=max(0.0, self._deadline - self._clock.monotonic()))
        except concurrent.futures.TimeoutError as exc:
            # A call still queued when its caller gives up must not run later: a write reported
            # as failed would otherwise land after all.
            self._future.cancel()
            raise KeychainUnavailable(
                f"keychain {self._what}: no answer within {self._timeout_s:g} s "
                "(locked keychain waiting for an unlock prompt?)") from exc
        except KeychainUnavailable:
            raise
        except Exception as exc:  # keyring, secretstorage, jeepney/dbus, OS errors alike
            raise KeychainUnavailable(f"keychain {self._what}: {_describe(exc)}") from exc


# --- the store -------------------------------------------------------------------------------

class KeychainStore(Store):
    """A keychain item as a store. Reads and writes can be started and finished later
    (``start_read``, ``start_write``): the agent overlaps them with its file writes.

    credsync's own item, a copy of the login."""

    kind = "keychain"

    def __init__(
        self,
        backend: KeychainBackend,
        service: str = OWN_SERVICE,
        account: str = OWN_ACCOUNT,
        *,
        name: str = "keychain",
        calls: KeychainCalls | None = None,
    ) -> None:
        self.backend = backend
        self.service = service
        self.account = account
        self.name = name
        self.location = f"service={service} account={account}"
        self.role = Role.COPY
        self._calls = calls if calls is not None else KeychainCalls()

    def _get(self) -> str | None:
        return self.backend.get_password(self.service, self.account)

    def read_document(self) -> tuple[Reading, dict[str, Any] | None]:
        return self._start_document()()

    def start_read(self) -> Callable[[], Reading]:
        finish = self._start_document()
        return lambda: finish()[0]

    def _start_document(self) -> Callable[[], tuple[Reading, dict[str, Any] | None]]:
        # An unusable keychain is a reading (state error, with the reason), never an exception.
        def failed(exc: KeychainUnavailable) -> tuple[Reading, dict[str, Any] | None]:
            return Reading(ReadState.ERROR, detail=str(exc)), None

        try:
            pending = self._calls.submit(self._get, "read")
        except KeychainUnavailable as exc:
            result = failed(exc)
            return lambda: result

        def finish() -> tuple[Reading, dict[str, Any] | None]:
            try:
                return _document(pending.result())
            except KeychainUnavailable as exc:
                return failed(exc)
        return finish

    def read(self) -> Reading:
        return self.start_read()()

    def start_write(self, cred: Credential,
                    supersedes: Credential | None = None) -> Callable[[], bool]:
        """Queue the whole write (read, compare, set: one job); the returned function waits for
        it and returns what ``write`` would, or raises its StoreError."""
        if cred.is_blank:
            raise StoreError("refusing to write a blank credential")
        return self._calls.submit(lambda: self._write_now(cred, supersedes), "write").result

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        return self.start_write(cred, supersedes)()

    def _write_now(self, cred: Credential, supersedes: Credential | None) -> bool:
        # On the worker thread. A failed read fails the write: it must not be guessed.
        reading, doc = _document(self._get())
        current = reading.valid
        if current is not None and (current.same_tokens(cred)
                                    or current.newer_than(cred, supersedes)):
            return False  # same login (no keychain rewrite), or a fresher one: never go back
        if reading.state is ReadState.INVALID:
            doc = None  # garbage is replaced whole
        data = render_document(merged_document(doc, cred), compact=True).decode("ascii")
        self.backend.set_password(self.service, self.account, data)
        return True

    def delete(self) -> bool:
        """Remove the item; False when there was none."""
        if self._calls.call(self._get, "read") is None:
            return False
        self._calls.call(lambda: self.backend.delete_password(self.service, self.account),
                         "delete")
        return True

    def close(self) -> None:
        """Stop the worker thread (shared with the other stores of the same keychain)."""
        self._calls.close()


def _document(raw: str | None) -> tuple[Reading, dict[str, Any] | None]:
    if raw is None:
        return Reading(ReadState.MISSING, detail="no keychain item"), None
    return parse_document(raw.encode())


def keychain_stores(
    config_dirs: Sequence[Path],
    backend: KeychainBackend,
    *,
    home: Path | None = None,
    calls: KeychainCalls | None = None,
) -> list[KeychainStore]:
    """credsync's own copy of the login these config dirs share."""
    return [KeychainStore(backend, account=own_account(config_dirs, home),
                          calls=calls if calls is not None else KeychainCalls())]


def own_account(config_dirs: Sequence[Path], home: Path | None = None) -> str:
    """credsync's own item's account: one item per set of config dirs, so that two logins
    never share a copy; the default ``~/.claude`` keeps the plain name."""
    default = (Path.home() if home is None else home) / ".claude"
    if [Path(d) for d in config_dirs] == [default]:
        return OWN_ACCOUNT
    return f"{OWN_ACCOUNT}/{scope_key(config_dirs)}"


# --- fakes for tests -------------------------------------------------------------------------

class MemoryKeyring:
    """An in-memory backend with keyring's behaviour (delete of a missing item raises)."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.items.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError("No such password!")


class BlockingKeyring(MemoryKeyring):
    """A backend whose calls block, as on an unlock prompt, until ``release()``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _block(self) -> None:
        self.entered.set()
        self.gate.wait()

    def release(self) -> None:
        self.gate.set()

    def get_password(self, service: str, username: str) -> str | None:
        self._block()
        return super().get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        self._block()
        super().set_password(service, username, password)
