"""A Codex CLI process, simulated from its source and its 0.171.0 build (notes/codex.md).

It plays Codex's ``AuthManager`` for one ``CODEX_HOME``: an in-memory snapshot of ``auth.json``
read at start and served between refreshes (Codex does not watch the file). Each ``turn()`` is
one model request:

1. Proactive refresh when the snapshot's access-token ``exp`` is within 5 minutes
   (``window_s``): first the guarded reload (re-read ``auth.json``; changed and the same account
   id: adopt it, send nothing; a different account id: a permanent failure, "refresh token
   account mismatch"), else POST the refresh (JSON, ``refresh_reason: proactive_expiry``) with
   no lock of any kind, then persist under Codex's two write locks (``agent.sim.codex_store``).
   A failed proactive refresh still serves the old token, as Codex does.
2. The API call (``check``, the simulated server's ``check_access``). On a 401,
   ``UnauthorizedRecovery``: reload if the account id matches (and the store changed), else
   refresh, else give up.

A permanent failure (HTTP 401, or ``refresh_token_reused`` / ``_invalidated`` / ``_expired``,
or the account guard) is cached for that snapshot: later refreshes send nothing until a reload
sees changed auth. Each such failure is one forced re-login; with ``relogin`` the "user" signs in
again at once in that home (a new login written with Codex's locks), unless the home already
holds something newer. Codex never clears its store on a failure, and neither does this.

As a process: ``python -m agent.sim.codex_session --home H --token-url U --duration-s 5``
prints its counters as one JSON line when it ends.
"""

from __future__ import annotations

import argparse
import enum
import json
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agent.clock import Clock, SystemClock
from agent.sim.codex_store import (
    LOCK_WAIT_S,
    CodexStore,
    LockTimeout,
    Snapshot,
    login_document,
    refreshed_document,
)
from agent.sim.server import CODEX_CLIENT_ID
from agent.sim.session import HttpCheck, HttpRelogin, SimHttpError, exchange

CODEX_WINDOW_S = 300.0  # CHATGPT_ACCESS_TOKEN_REFRESH_WINDOW_MINUTES = 5
ACCOUNT_MISMATCH = "refresh token account mismatch"
PERMANENT_CODES = ("refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated")

Check = Callable[[str], bool]
Relogin = Callable[[float], Mapping[str, Any]]  # now -> a new login's ``tokens``


class Outcome(str, enum.Enum):
    IDLE = "idle"  # the token was good: nothing sent
    REFRESHED = "refreshed"
    ADOPTED = "adopted"  # a reload found another writer's login: nothing sent
    FAILED = "failed"  # a permanent failure, new or cached (no request)
    UNAUTHORIZED = "unauthorized"  # a 401 that recovery could not mend
    TRANSIENT = "transient"  # network or server error
    LOCK_TIMEOUT = "lock-timeout"  # a write lock past its bound: the rotation was not saved
    LOGGED_OUT = "logged-out"  # no login in the store


@dataclass
class CodexCounters:
    turns: int = 0
    requests: int = 0  # token requests sent
    refreshes: int = 0  # rotations saved
    adoptions: int = 0  # reloads that took another writer's login
    reused: int = 0  # refresh_token_reused answers
    invalidated: int = 0  # refresh_token_invalidated answers
    expired: int = 0  # refresh_token_expired answers
    account_mismatches: int = 0
    permanent_failures: int = 0  # every permanent answer or guard failure
    cached_failures: int = 0  # refreshes refused from the cache, no request sent
    forced_relogins: int = 0  # snapshots that failed permanently
    relogins: int = 0  # logins the "user" wrote afterwards
    unauthorized: int = 0  # 401s from the API
    gave_up: int = 0  # 401s recovery did not mend
    transient_errors: int = 0
    lock_waits: int = 0  # writes that found a lock held and waited
    lock_timeouts: int = 0
    logged_out_turns: int = 0


class CodexSession:
    def __init__(
        self,
        home: Path,
        token_url: str,
        *,
        clock: Clock | None = None,
        check: Check | None = None,
        relogin: Relogin | None = None,
        client_id: str = CODEX_CLIENT_ID,
        window_s: float = CODEX_WINDOW_S,
        http_timeout_s: float = 10.0,
        lock_wait_s: float = LOCK_WAIT_S,
        name: str = "",
    ) -> None:
        self.home = home
        self.token_url = token_url
        self.client_id = client_id
        self.window_s = window_s
        self.http_timeout_s = http_timeout_s
        self.name = name or str(home)
        self.counters = CodexCounters()
        self.last_outcome: Outcome | None = None
        self.snapshot: Snapshot | None = None
        self.failure: str | None = None  # the cached permanent failure of this snapshot
        self.store = CodexStore(home, lock_wait_s=lock_wait_s, on_lock_wait=self._waiting)
        self._clock: Clock = clock or SystemClock()
        self._check = check
        self._relogin = relogin
        self._lock = threading.Lock()  # Codex's in-process refresh semaphore

    # -- the session's life ------------------------------------------------------------------
    def start(self) -> Snapshot | None:
        """Codex starting: the store read once into memory."""
        self.snapshot = self.store.read()
        self.failure = None
        return self.snapshot

    def turn(self) -> Outcome:
        with self._lock:
            self.counters.turns += 1
            self.last_outcome = self._turn(self._clock.now())
            return self.last_outcome

    def expiring(self, now: float | None = None) -> bool:
        at = self._clock.now() if now is None else now
        return self.snapshot is not None and at + self.window_s >= self.snapshot.expires_at

    def _turn(self, now: float) -> Outcome:
        if self.snapshot is None and self.start() is None:
            self.counters.logged_out_turns += 1
            return Outcome.LOGGED_OUT
        outcome = Outcome.IDLE
        if self.expiring(now):
            outcome = self._refresh(now)
        api = self._api_call(now)
        return api if api is not None else outcome

    # -- refresh_token(): the guarded reload, then the authority ------------------------------
    def _refresh(self, now: float) -> Outcome:
        reloaded = self._guarded_reload()
        if reloaded is not None:
            return reloaded
        return self._from_authority(now, "proactive_expiry")

    def _guarded_reload(self) -> Outcome | None:
        """ADOPTED, FAILED (another account) or None (nothing changed: go ahead)."""
        assert self.snapshot is not None
        stored = self.store.read()
        stored_account = stored.account_id if stored is not None else None
        if stored_account != self.snapshot.account_id:
            self.counters.account_mismatches += 1
            self._fail(ACCOUNT_MISMATCH, relogin=False)
            return Outcome.FAILED
        if stored is not None and stored.doc != self.snapshot.doc:
            self._adopt(stored)
            return Outcome.ADOPTED
        return None

    def _adopt(self, stored: Snapshot) -> None:
        self.snapshot = stored
        self.failure = None  # the cache is for the old snapshot
        self.counters.adoptions += 1

    def _from_authority(self, now: float, reason: str) -> Outcome:
        assert self.snapshot is not None
        if self.failure is not None:
            self.counters.cached_failures += 1
            return Outcome.FAILED
        self.counters.requests += 1
        try:
            status, body = self._post(self.snapshot.refresh_token, reason)
        except SimHttpError:
            self.counters.transient_errors += 1
            return Outcome.TRANSIENT
        if status == 200 and body is not None and isinstance(body.get("access_token"), str):
            return self._persist(body, now)
        code = error_code(body)
        permanent = status == 401 or code in PERMANENT_CODES or (
            status == 400 and code == "invalid_grant")
        if not permanent:
            self.counters.transient_errors += 1
            return Outcome.TRANSIENT
        if code == "refresh_token_reused":
            self.counters.reused += 1
        elif code == "refresh_token_invalidated":
            self.counters.invalidated += 1
        elif code == "refresh_token_expired":
            self.counters.expired += 1
        self._fail(code or f"http {status}", relogin=True)
        return Outcome.FAILED

    def _post(self, refresh_token: str, reason: str) -> tuple[int, dict[str, Any] | None]:
        payload = {"client_id": self.client_id, "grant_type": "refresh_token",
                   "refresh_reason": reason, "refresh_token": refresh_token}
        request = urllib.request.Request(
            self.token_url, data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json", "originator": "codex_exec"})
        return exchange(request, self.http_timeout_s)

    def _persist(self, answer: Mapping[str, Any], now: float) -> Outcome:
        assert self.snapshot is not None
        cached = self.snapshot.doc
        try:
            written = self.store.save(lambda stored: refreshed_document(stored, cached, answer,
                                                                        now))
        except LockTimeout:
            self.counters.lock_timeouts += 1
            return Outcome.LOCK_TIMEOUT
        saved = Snapshot.of(written)
        if saved is not None:
            self.snapshot = saved  # Codex reloads what it saved
            self.failure = None
        self.counters.refreshes += 1
        return Outcome.REFRESHED

    def _fail(self, reason: str, *, relogin: bool) -> None:
        self.counters.permanent_failures += 1
        if self.failure is not None:
            return  # this snapshot had already failed: the same re-login
        self.failure = reason
        self.counters.forced_relogins += 1
        if relogin and self._relogin is not None:
            self._sign_in_again()

    def _sign_in_again(self) -> None:
        """The user runs ``codex login`` in this home, unless it already holds a newer login."""
        assert self.snapshot is not None
        failed = self.snapshot.doc
        try:
            tokens = self._relogin(self._clock.now()) if self._relogin else None
        except SimHttpError:
            return
        if tokens is None:
            return
        now = self._clock.now()

        def update(stored: dict[str, Any] | None) -> dict[str, Any]:
            if stored is not None and stored != failed:
                return stored  # someone else signed in meanwhile: theirs stands
            return login_document(tokens, now)

        try:
            self.store.save(update)
        except LockTimeout:
            self.counters.lock_timeouts += 1
            return
        self.counters.relogins += 1

    # -- the API call and UnauthorizedRecovery -----------------------------------------------
    def _api_call(self, now: float) -> Outcome | None:
        """None when the call worked; else what recovery came to."""
        if self._check is None or self.snapshot is None:
            return None
        if self._check(self.snapshot.access_token):
            return None
        self.counters.unauthorized += 1
        stored = self.store.read()  # 1. reload, if the account id matches
        if stored is not None and stored.account_id == self.snapshot.account_id \
                and stored.doc != self.snapshot.doc:
            self._adopt(stored)
            if self._check(stored.access_token):
                return Outcome.ADOPTED
        outcome = self._from_authority(now, "unauthorized")  # 2. refresh
        if outcome is Outcome.REFRESHED and self._check(self.snapshot.access_token):
            return outcome
        self.counters.gave_up += 1  # 3. give up
        return outcome if outcome is not Outcome.REFRESHED else Outcome.UNAUTHORIZED

    def _waiting(self, lock_name: str) -> None:
        self.counters.lock_waits += 1


def error_code(body: Mapping[str, Any] | None) -> str | None:
    """The code Codex's classifier reads: ``error.code``, ``error`` as a string, or ``code``."""
    if body is None:
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return str(error["code"]).lower()
    if isinstance(error, str):
        return error.lower()
    code = body.get("code")
    return code.lower() if isinstance(code, str) else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent.sim.codex_session",
                                     description="Run one simulated Codex CLI session.")
    parser.add_argument("--home", type=Path, required=True, help="its CODEX_HOME")
    parser.add_argument("--token-url", required=True)
    parser.add_argument("--check-url", default=None, help="API check endpoint (401 modelling)")
    parser.add_argument("--relogin-url", default=None, help="sign in again after a failure")
    parser.add_argument("--window-s", type=float, default=CODEX_WINDOW_S)
    parser.add_argument("--interval-s", type=float, default=0.1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--name", default="")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    relogin = HttpRelogin(args.relogin_url) if args.relogin_url else None
    session = CodexSession(args.home, args.token_url, window_s=args.window_s,
                           check=HttpCheck(args.check_url) if args.check_url else None,
                           relogin=relogin, name=args.name)
    session.start()
    deadline = time.monotonic() + args.duration_s
    while not stop.is_set() and time.monotonic() < deadline:
        session.turn()
        stop.wait(args.interval_s)
    print(json.dumps({"name": session.name, "last_outcome": session.last_outcome,
                      **asdict(session.counters)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
