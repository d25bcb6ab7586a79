"""A Claude Code session, simulated from the CLI's documented behaviour (notes/prior-art.md).

Each ``step(now)`` is one moment of a session's life: it reads ``<config dir>/.credentials.json``
(the CLI notices writes by mtime, so reading every step is the same thing), makes one API call
(``check``: a 401 means the access token is dead) and refreshes when ``now + 5 min >= expiresAt``
or after a 401, the way the CLI does:

1. take ``.oauth_refresh.lock`` and the legacy ``<realpath(dir)>.lock`` (release 2.1.37,
   ``cas=False``: the legacy lock only), re-read, and adopt a token another process wrote;
2. send the refresh (the CLI's JSON body);
3. save under ``.storage-write.lock`` with temp + rename; with ``cas`` only if the refresh token on
   disk is still the one sent, else adopt what is there;
4. on ``invalid_grant`` re-read; if nothing newer is there, CLEAR the login to empty tokens and
   ``expiresAt`` 0: a forced re-login. With ``relogin`` the user logs in again at once.

That is ``release="current"`` (``cas=True``, the default) and ``"2.1.37"`` (``cas=False``).
``release="2.1.332"`` follows that release's bundle instead: re-read and adopt a changed access
token; take ``.oauth_refresh.lock`` only, one attempt at a time; while it is held retry 5 times
after 1-2 s, re-reading each time, then watch the lock for the rest of 7.5 s: its mtime still the
same means a dead holder, and the lock is taken over (``.oauth_refresh.lock.owner`` records the
taker's pid), a moved mtime gives up (``LOCK_BUSY``). Holding the lock it re-reads, redeems and
saves with compare-and-swap; its cleared login also drops ``loginEnded``.

HTTP goes through urllib, independent of the refresher under test. As a process:
``python -m agent.sim.session --config-dir D --token-url U --duration-s 5`` prints its counters as
one JSON line when it ends; ``--release 2.1.332`` (or ``--no-cas`` for 2.1.37) picks the release.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agent.config import CLAUDE_CLIENT_ID, CLAUDE_SCOPE
from agent.credential import (
    MAX_DOCUMENT_BYTES,
    Credential,
    Reading,
    ReadState,
    merged_document,
    parse_document,
)
from agent.errors import LockError, StoreError
from agent.fsutil import atomic_write, read_bytes
from agent.locks.mkdirlock import (
    MkdirLock,
    legacy_refresh_lock,
    oauth_refresh_lock,
    storage_write_lock,
)

CLI_WINDOW_S = 300.0
# The CLI retries a busy lock about 5 times with 1-2 s random sleeps.
CLI_LOCK_WAIT_S = 7.5
CREDENTIALS_FILE = ".credentials.json"
# Release 2.1.332's busy refresh lock: 5 retries after a uniform 1-2 s sleep each, then a watch of
# the lock's mtime until 7.5 s after the first try; a takeover is recorded in the owner file.
CLI_332_LOCK_RETRIES = 5
CLI_332_RETRY_SLEEP_S = (1.0, 2.0)
CLI_332_WATCH_S = 7.5
OAUTH_LOCK_OWNER_FILE = ".oauth_refresh.lock.owner"

Check = Callable[[str], bool]
Relogin = Callable[[float], Mapping[str, Any]]


class Release(str, enum.Enum):
    V2_1_37 = "2.1.37"  # the legacy lock only, a save without compare-and-swap (cas=False)
    CURRENT = "current"  # the model before 2.1.332 was read (cas=True)
    V2_1_332 = "2.1.332"  # read from that release's bundle


def resolve_release(cas: bool | None, release: Release | str | None) -> Release:
    """The release a ``SimSession`` models: ``cas`` alone keeps its old meaning."""
    if release is None:
        return Release.V2_1_37 if cas is False else Release.CURRENT
    chosen = Release(release)
    if cas is not None and cas != (chosen is not Release.V2_1_37):
        raise ValueError(f"cas={cas} contradicts release {chosen.value}")
    return chosen


class Outcome(str, enum.Enum):
    IDLE = "idle"  # the token is good: nothing to do
    REFRESHED = "refreshed"
    ADOPTED = "adopted"  # took another process's token; sent nothing, or lost the CAS
    CLEARED = "cleared"  # invalid_grant and nothing newer: the login was cleared
    LOGGED_OUT = "logged-out"  # the store holds no usable login
    TRANSIENT = "transient"  # network or server error: try again at the next step
    LOCK_BUSY = "lock-busy"


@dataclass
class SessionCounters:
    requests: int = 0  # token requests sent
    refreshes: int = 0  # rotations saved
    invalid_grants: int = 0
    forced_relogins: int = 0  # logins this session cleared
    adoptions: int = 0
    unauthorized: int = 0  # 401s from the API check
    transient_errors: int = 0
    lock_busy: int = 0
    logged_out_steps: int = 0
    adopted_while_waiting: int = 0  # 2.1.332: adopted on a re-read between lock retries
    takeovers: int = 0  # 2.1.332: a lock whose holder looked dead, taken over


class SimHttpError(Exception):
    """The server could not be reached or gave no usable answer."""


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


Answer = tuple[int, "dict[str, Any] | None"]


def exchange(request: urllib.request.Request, timeout_s: float) -> Answer:
    """Send; return the status and the JSON object answered (None when not an object)."""
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return int(response.status), _json_object(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _json_object(exc.read())
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise SimHttpError(type(exc).__name__) from exc


class HttpCheck:
    """An API call with the access token: False only on a 401 (other errors are not auth)."""

    def __init__(self, check_url: str, timeout_s: float = 10.0) -> None:
        self.check_url = check_url
        self.timeout_s = timeout_s

    def __call__(self, access_token: str) -> bool:
        request = urllib.request.Request(
            self.check_url, headers={"Authorization": f"Bearer {access_token}"})
        try:
            status, _ = exchange(request, self.timeout_s)
        except SimHttpError:
            return True
        return status != 401


class HttpRelogin:
    """The user logging in again: a new login from the simulated server's ``/_sim/login``."""

    def __init__(self, login_url: str, timeout_s: float = 10.0) -> None:
        self.login_url = login_url
        self.timeout_s = timeout_s

    def __call__(self, now: float) -> Mapping[str, Any]:
        status, body = exchange(urllib.request.Request(self.login_url, data=b"", method="POST"),
                                self.timeout_s)
        if status != 200 or body is None:
            raise SimHttpError(f"login answered {status}")
        return body


def blank_oauth(cred: Credential) -> dict[str, Any]:
    """The CLI's cleared login: other keys kept, tokens emptied, expiresAt 0."""
    return {**cred.oauth, "accessToken": "", "refreshToken": "", "expiresAt": 0}


def blank_oauth_332(cred: Credential) -> dict[str, Any]:
    """Release 2.1.332's cleared login: as ``blank_oauth``, and no ``loginEnded`` (the CLI
    writes ``"time_limit"`` there only when the refresh token's time limit ended the login,
    which the simulation does not model)."""
    oauth = {key: value for key, value in cred.oauth.items() if key != "loginEnded"}
    return {**oauth, "accessToken": "", "refreshToken": "", "expiresAt": 0}


class SimSession:
    def __init__(
        self,
        config_dir: Path,
        token_url: str,
        *,
        cas: bool | None = None,
        release: Release | str | None = None,
        client_id: str = CLAUDE_CLIENT_ID,
        scope: str = CLAUDE_SCOPE,
        window_s: float = CLI_WINDOW_S,
        check: Check | None = None,
        relogin: Relogin | None = None,
        lock_wait_s: float = CLI_LOCK_WAIT_S,
        http_timeout_s: float = 10.0,
        name: str = "",
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        lock_retries: int = CLI_332_LOCK_RETRIES,
        retry_sleep_s: tuple[float, float] = CLI_332_RETRY_SLEEP_S,
        takeover_watch_s: float = CLI_332_WATCH_S,
    ) -> None:
        self.config_dir = config_dir
        self.path = config_dir / CREDENTIALS_FILE
        self.token_url = token_url
        self.release = resolve_release(cas, release)
        self.cas = self.release is not Release.V2_1_37
        self.client_id = client_id
        self.scope = scope
        self.window_s = window_s
        self.lock_wait_s = lock_wait_s
        self.http_timeout_s = http_timeout_s
        self.name = name or str(config_dir)
        self.counters = SessionCounters()
        self.last_outcome: Outcome | None = None
        self._check = check
        self._relogin = relogin
        # Used by 2.1.332's lock retries only; the other releases wait inside MkdirLock.
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng if rng is not None else random.Random()
        self.lock_retries = lock_retries
        self.retry_sleep_s = retry_sleep_s
        self.takeover_watch_s = takeover_watch_s

    # -- one step --------------------------------------------------------------------------
    def step(self, now: float) -> Outcome:
        self.last_outcome = self._step(now)
        return self.last_outcome

    def _step(self, now: float) -> Outcome:
        seen = self._load()
        if seen is None:
            self.counters.logged_out_steps += 1
            return Outcome.LOGGED_OUT
        unauthorized = False
        if not self._expiring(seen, now):
            if self._check is None or self._check(seen.access_token):
                return Outcome.IDLE
            self.counters.unauthorized += 1
            unauthorized = True
        if self.release is Release.V2_1_332:
            return self._refresh_332(seen, now, unauthorized)
        try:
            with self._refresh_locks():
                return self._refresh_locked(seen, now, unauthorized)
        except LockError:
            self.counters.lock_busy += 1
            return Outcome.LOCK_BUSY

    def _expiring(self, cred: Credential, now: float) -> bool:
        return now + self.window_s >= cred.expires_at

    @contextlib.contextmanager
    def _refresh_locks(self) -> Iterator[None]:
        locks: list[MkdirLock] = [legacy_refresh_lock(self.config_dir)]
        if self.cas:
            locks.insert(0, oauth_refresh_lock(self.config_dir))
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock.hold(self.lock_wait_s))
            yield

    def _refresh_locked(self, seen: Credential, now: float, unauthorized: bool) -> Outcome:
        current = self._load()  # re-read after locking: someone may have refreshed meanwhile
        if current is None:
            self.counters.logged_out_steps += 1
            return Outcome.LOGGED_OUT
        changed = (current.refresh_token, current.access_token) != (seen.refresh_token,
                                                                    seen.access_token)
        if changed and (unauthorized or not self._expiring(current, now)):
            self.counters.adoptions += 1
            return Outcome.ADOPTED
        return self._redeem(current, now)

    # -- release 2.1.332 -------------------------------------------------------------------
    def _refresh_332(self, seen: Credential, now: float, unauthorized: bool) -> Outcome:
        lock = oauth_refresh_lock(self.config_dir)
        started = self._monotonic()
        retries, first_try, first_mtime = 0, started, None
        waited = False  # the lock was found held at least once in this refresh
        try:
            while True:
                at = now + (self._monotonic() - started)  # the wall clock moves while waiting
                current = self._load()  # 1. re-read: another process may have refreshed
                if current is None:
                    self.counters.logged_out_steps += 1
                    return Outcome.LOGGED_OUT
                if current.access_token != seen.access_token:  # "race resolved"
                    self.counters.adoptions += 1
                    if waited:
                        self.counters.adopted_while_waiting += 1
                    return Outcome.ADOPTED
                if not unauthorized and not self._expiring(current, at):  # 2. not needed now
                    return Outcome.IDLE
                if lock.held:  # taken over below
                    return self._refresh_locked(seen, at, unauthorized)
                try:
                    lock.acquire(0)  # 3. one attempt, no waiting
                except LockError:  # 4. ELOCKED
                    waited = True
                    if first_mtime is None:
                        first_mtime = self._lock_mtime(lock)
                    if retries < self.lock_retries:
                        retries += 1
                        self._sleep(self._rng.uniform(*self.retry_sleep_s))
                        continue
                    rest = self.takeover_watch_s - (self._monotonic() - first_try)
                    if rest > 0:
                        self._sleep(rest)
                    mtime = self._lock_mtime(lock)
                    if mtime is None:  # released meanwhile: try again (the count stays)
                        continue
                    if mtime != first_mtime:  # the holder keeps touching it: alive
                        self.counters.lock_busy += 1
                        return Outcome.LOCK_BUSY
                    self._take_over(lock)  # a static mtime: the holder is dead
                    retries, first_try, first_mtime = 0, self._monotonic(), None
                    continue
                return self._refresh_locked(seen, at, unauthorized)  # 5. with the lock
        finally:
            lock.release()

    @staticmethod
    def _lock_mtime(lock: MkdirLock) -> float | None:
        try:
            return os.stat(lock.path).st_mtime
        except FileNotFoundError:
            return None

    def _take_over(self, lock: MkdirLock) -> None:
        """Remove a dead holder's lock, record this process as the owner and take it; another
        contender may take it first, and then the next attempt finds it held again."""
        with contextlib.suppress(OSError):
            os.rmdir(lock.path)
        atomic_write(self.config_dir / OAUTH_LOCK_OWNER_FILE,
                     json.dumps({"pid": os.getpid()}).encode())
        with contextlib.suppress(LockError):
            lock.acquire(0)
            self.counters.takeovers += 1

    def _redeem(self, sent: Credential, now: float) -> Outcome:
        self.counters.requests += 1
        try:
            status, body = self._post_token(sent.refresh_token)
        except SimHttpError:
            self.counters.transient_errors += 1
            return Outcome.TRANSIENT
        rotated = self._rotated(sent, body, now) if status == 200 else None
        if rotated is not None:
            return self._save(sent, rotated)
        if status in (400, 401) and body is not None and body.get("error") == "invalid_grant":
            return self._on_invalid_grant(sent, now)
        self.counters.transient_errors += 1
        return Outcome.TRANSIENT

    def _post_token(self, refresh_token: str) -> Answer:
        payload = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                   "client_id": self.client_id, "scope": self.scope}
        request = urllib.request.Request(self.token_url, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"},
                                         method="POST")
        return exchange(request, self.http_timeout_s)

    @staticmethod
    def _rotated(sent: Credential, body: Mapping[str, Any] | None,
                 now: float) -> Credential | None:
        if body is None:
            return None
        access, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(access, str) or not isinstance(expires_in, (int, float)):
            return None
        refresh = body.get("refresh_token") or sent.refresh_token
        return Credential({**sent.oauth, "accessToken": access, "refreshToken": refresh,
                           "expiresAt": round((now + expires_in) * 1000)})

    def _save(self, sent: Credential, new: Credential) -> Outcome:
        with self._storage_lock():
            reading, doc = self._read_document()
            on_disk = reading.credential.refresh_token if reading.credential else ""
            if self.cas and on_disk != sent.refresh_token:
                self.counters.adoptions += 1  # someone else saved first: theirs stands
                return Outcome.ADOPTED
            self._write(doc, new.oauth)
        self.counters.refreshes += 1
        return Outcome.REFRESHED

    def _on_invalid_grant(self, sent: Credential, now: float) -> Outcome:
        self.counters.invalid_grants += 1
        with self._storage_lock():
            reading, doc = self._read_document()
            current = reading.valid
            if current is not None and current.refresh_token != sent.refresh_token:
                self.counters.adoptions += 1
                return Outcome.ADOPTED
            self._write(doc, blank_oauth_332(sent) if self.release is Release.V2_1_332
                        else blank_oauth(sent))
            self.counters.forced_relogins += 1
            if self._relogin is not None:
                with contextlib.suppress(SimHttpError):
                    self._write(doc, self._relogin(now))
        return Outcome.CLEARED

    # -- the store, as the CLI reads and writes it -----------------------------------------
    def _read_document(self) -> tuple[Reading, dict[str, Any] | None]:
        try:
            raw = read_bytes(self.path, MAX_DOCUMENT_BYTES)
        except StoreError as exc:
            return Reading(ReadState.ERROR, detail=str(exc)), None
        if raw is None:
            return Reading(ReadState.MISSING), None
        return parse_document(raw)

    def _load(self) -> Credential | None:
        return self._read_document()[0].valid

    @contextlib.contextmanager
    def _storage_lock(self) -> Iterator[None]:
        with storage_write_lock(self.config_dir).hold(self.lock_wait_s):
            yield

    def _write(self, doc: dict[str, Any] | None, oauth: Mapping[str, Any]) -> None:
        data = json.dumps(merged_document(doc, Credential(oauth)), indent=2).encode() + b"\n"
        atomic_write(self.path, data)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent.sim.session",
                                     description="Run one simulated Claude Code session.")
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--token-url", required=True)
    parser.add_argument("--check-url", default=None, help="API check endpoint (401 modelling)")
    parser.add_argument("--relogin-url", default=None, help="log in again after a clear")
    parser.add_argument("--no-cas", action="store_true", help="behave like release 2.1.37")
    parser.add_argument("--release", choices=[r.value for r in Release], default=None,
                        help="the CLI release modelled (default: current, or 2.1.37 with "
                             "--no-cas)")
    parser.add_argument("--window-s", type=float, default=CLI_WINDOW_S)
    parser.add_argument("--interval-s", type=float, default=0.1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--start-at", type=float, default=None,
                        help="wall-clock time of the first step (waits at most 30 s)")
    parser.add_argument("--stop-when-logged-out", action="store_true")
    parser.add_argument("--name", default="")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        release = resolve_release(False if args.no_cas else None, args.release)
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    session = SimSession(
        args.config_dir, args.token_url, release=release, window_s=args.window_s,
        check=HttpCheck(args.check_url) if args.check_url else None,
        relogin=HttpRelogin(args.relogin_url) if args.relogin_url else None, name=args.name)
    if args.start_at is not None:
        stop.wait(min(max(args.start_at - time.time(), 0.0), 30.0))
    deadline = time.monotonic() + args.duration_s
    while not stop.is_set() and time.monotonic() < deadline:
        outcome = session.step(time.time())
        if args.stop_when_logged_out and outcome in (Outcome.CLEARED, Outcome.LOGGED_OUT):
            break
        stop.wait(args.interval_s)
    report = {"name": session.name, "last_outcome": session.last_outcome,
              **asdict(session.counters)}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
