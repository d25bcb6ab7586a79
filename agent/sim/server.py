"""A real OAuth token server on 127.0.0.1 with strict refresh-token rotation, for tests and demos.

Endpoints
    POST /v1/oauth/token   refresh grant, ``claude`` style (JSON) or ``oauth2`` style (RFC 6749
                           s.6 form body; HTTP Basic client auth when a client_secret is set)
    GET  /v1/check         ``Authorization: Bearer <access token>``: 200 when valid, else 401
    POST /_sim/login       issue a new login (a new token family): the claudeAiOauth object;
                           a Codex server takes ``{"account_id", "user_id", ...}`` and answers
                           Codex's ``tokens`` object
    GET  /_sim/stats       counters and the request log
    POST /_sim/fault       {"kind", "count", "status", "retry_after", "delay_s"}: queue faults
    POST /_sim/clear-faults

In a thread: ``with OAuthServer(access_lifetime_s=60) as server: server.url``. As a process:
``python -m agent.sim.server --port 0 --lifetime 60`` prints the token URL on its first line.

``OAuthServer(style="codex")`` plays OpenAI's token endpoint as Codex CLI meets it (notes/codex.md):
a JSON request ``{client_id, grant_type, refresh_token, refresh_reason?}``; the answer
``{id_token, access_token, refresh_token}`` with JWT tokens (``agent.sim.jwt``; the access token's
``exp``/``iat`` carry its lifetime, there is no ``expires_in``); a refused refresh token is HTTP
401 ``{"error": {"code": ...}}`` with the codes Codex's ``classify_refresh_token_failure`` maps:
``refresh_token_reused`` (a spent token: the whole family is revoked), ``refresh_token_invalidated``
(any token of a revoked family) and ``refresh_token_expired`` (past the refresh lifetime); an
unknown token is 401 ``{"error": "invalid_grant", ...}`` (a 401: permanent for Codex too). The same
ledger holds both styles' families.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import json
import signal
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Literal

from agent.clock import Clock, SystemClock
from agent.config import CLAUDE_CLIENT_ID, CLAUDE_SCOPE
from agent.credential import fingerprint_of
from agent.sim import jwt
from agent.sim.faults import Fault, FaultQueue
from agent.sim.ledger import Grant, GrantRejected, Ledger, RejectKind

TOKEN_PATH = "/v1/oauth/token"
CHECK_PATH = "/v1/check"
MAX_BODY = 64 * 1024
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"  # Codex CLI's public OAuth client
Style = Literal["claude", "codex"]
# What OpenAI's token endpoint says for each refusal, as Codex classifies them.
CODEX_REFUSALS: dict[RejectKind, tuple[str, str]] = {
    "reused": ("refresh_token_reused",
               "Your refresh token has already been used to generate a new access token."),
    "revoked": ("refresh_token_invalidated", "Your refresh token has been invalidated."),
    "expired": ("refresh_token_expired", "Your refresh token has expired."),
}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, obj: object, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls(status, json.dumps(obj).encode(), headers)


@dataclass(frozen=True)
class RequestRecord:
    time: float  # server clock
    style: str  # "claude", "oauth2", "codex", or "-" when the request could not be parsed
    fingerprint: str  # of the presented refresh token
    outcome: str  # rotated, lost, invalid_grant, invalid_client, invalid_request, fault:503, ...
    status: int  # 0 when the connection was closed without an answer


@dataclass(frozen=True)
class ServerStats:
    token_requests: int = 0
    rotations: int = 0
    invalid_grants: int = 0
    revoked_families: int = 0
    logins: int = 0
    checks: int = 0
    unauthorized: int = 0
    reused: int = 0  # spent refresh tokens presented again (each revoked its family)


@dataclass(frozen=True)
class TokenRequest:
    style: str
    grant_type: str
    refresh_token: str
    client_id: str
    scope: str | None
    basic: tuple[str, str] | None


class BadRequest(Exception):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest("invalid_client", "malformed Basic credentials") from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise BadRequest("invalid_client", "malformed Basic credentials")
    # RFC 6749 s.2.3.1: id and secret are form-encoded before base64.
    return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)


def _fields(content_type: str, body: bytes) -> tuple[str, dict[str, str]]:
    media = content_type.split(";")[0].strip().lower()
    try:
        if media == "application/json":
            obj = json.loads(body)
            if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
                raise BadRequest("invalid_request", "body must be an object of strings")
            return "claude", obj
        if media == "application/x-www-form-urlencoded":
            pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
            if len({k for k, _ in pairs}) != len(pairs):
                raise BadRequest("invalid_request", "a parameter is repeated")
            return "oauth2", dict(pairs)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("invalid_request", "body cannot be parsed") from exc
    raise BadRequest("invalid_request", "unsupported content type")


def parse_token_request(content_type: str, authorization: str | None,
                        body: bytes) -> TokenRequest:
    style, fields = _fields(content_type, body)
    basic = _basic_credentials(authorization)
    client_id = fields.get("client_id") or (basic[0] if basic else "")
    return TokenRequest(style, fields.get("grant_type", ""), fields.get("refresh_token", ""),
                        client_id, fields.get("scope"), basic)


class OAuthServer:
    def __init__(
        self,
        *,
        access_lifetime_s: float = 8 * 3600,
        refresh_lifetime_s: float | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        scope: str = CLAUDE_SCOPE,
        subscription_type: str = "max",
        rotate: bool = True,
        clock: Clock | None = None,
        port: int = 0,
        style: Style = "claude",
        revoke_old_access: bool = False,
    ) -> None:
        self.style: Style = style
        self.client_id = client_id or (CODEX_CLIENT_ID if style == "codex" else CLAUDE_CLIENT_ID)
        self.client_secret = client_secret
        self.scope = scope
        self.subscription_type = subscription_type
        self.faults = FaultQueue()
        self._clock: Clock = clock or SystemClock()
        self._port = port
        self._lock = threading.Lock()
        self._ledger = Ledger(access_lifetime_s, refresh_lifetime_s, rotate,
                              self._codex_access if style == "codex" else None,
                              revoke_old_access)
        self._stats = ServerStats()
        self._log: list[RequestRecord] = []
        self._stopping = threading.Event()
        # Run in the handler thread as each token request arrives: lets a test act "while the
        # request is in flight" (another process writing a store) without racing a timer.
        self.on_token_request: Callable[[], None] | None = None
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> OAuthServer:
        self._stopping.clear()
        self._http = _HTTPServer(self, self._port)
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,),
                                        name="sim-oauth-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay fault
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http = self._thread = None

    def __enter__(self) -> OAuthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._http is None:
            raise RuntimeError("the server is not running")
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        return self.base_url + TOKEN_PATH

    @property
    def check_url(self) -> str:
        return self.base_url + CHECK_PATH

    # -- configuration and inspection (thread-safe) ----------------------------------------
    def set_lifetimes(self, access_lifetime_s: float,
                      refresh_lifetime_s: float | None = None) -> None:
        with self._lock:
            self._ledger.access_lifetime_s = access_lifetime_s
            self._ledger.refresh_lifetime_s = refresh_lifetime_s

    def inject(self, fault: Fault, count: int = 1) -> None:
        self.faults.push(fault, count)

    def inject_status(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        self.inject(Fault("status", status=status, retry_after=retry_after), count)

    def inject_delay(self, delay_s: float, count: int = 1) -> None:
        self.inject(Fault("delay", delay_s=delay_s), count)

    def inject_drop(self, count: int = 1) -> None:
        self.inject(Fault("drop"), count)

    def inject_lost(self, count: int = 1) -> None:
        self.inject(Fault("lost"), count)

    def inject_garbage(self, count: int = 1) -> None:
        self.inject(Fault("garbage"), count)

    def clear_faults(self) -> None:
        self.faults.clear()

    def stats(self) -> ServerStats:
        with self._lock:
            return ServerStats(**{**asdict(self._stats),
                                  "revoked_families": self._ledger.revoked_families,
                                  "reused": self._ledger.reused})

    def log(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def issued_tokens(self) -> list[str]:
        with self._lock:
            return self._ledger.issued()

    def family_of(self, token: str) -> int | None:
        with self._lock:
            return self._ledger.family_of(token)

    # -- the OAuth behaviour ---------------------------------------------------------------
    def issue_login(self, now: float | None = None, *, account_id: str = "sim-account",
                    user_id: str = "sim-user", email: str = "sim@example.com",
                    plan_type: str = "plus") -> dict[str, Any]:
        """A new login (a new token family), shaped like the CLI's claudeAiOauth object; for a
        Codex server like auth.json's ``tokens`` (the identity arguments are Codex's only)."""
        at = self._clock.now() if now is None else now
        meta = {"account_id": account_id, "user_id": user_id, "email": email,
                "plan_type": plan_type}
        with self._lock:
            grant = self._ledger.login(at, meta)
            self._count(logins=1)
        if self.style == "codex":
            return {**self._codex_body(grant, at), "account_id": account_id}
        oauth: dict[str, Any] = {
            "accessToken": grant.access_token,
            "refreshToken": grant.refresh_token,
            "expiresAt": _ms(at + grant.expires_in),
            "scopes": self.scope.split(),
            "subscriptionType": self.subscription_type,
            "rateLimitTier": "default_claude_max_20x",
        }
        if grant.refresh_token_expires_in is not None:
            oauth["refreshTokenExpiresAt"] = _ms(at + grant.refresh_token_expires_in)
        return oauth

    @property
    def revokes_old_access(self) -> bool:
        return self._ledger.revoke_old_access

    def check_access(self, access_token: str, now: float | None = None) -> bool:
        """Would an API call with this access token succeed now (else the API answers 401)?"""
        at = self._clock.now() if now is None else now
        with self._lock:
            valid = self._ledger.access_valid(access_token, at)
            self._count(checks=1, unauthorized=0 if valid else 1)
        return valid

    def handle_token(self, content_type: str, authorization: str | None,
                     body: bytes) -> Reply | None:
        """Answer one token request; None means: close the connection without an answer."""
        with self._lock:
            self._count(token_requests=1)
        hook = self.on_token_request
        if hook is not None:
            hook()
        try:
            request: TokenRequest | BadRequest = parse_token_request(
                content_type, authorization, body)
        except BadRequest as exc:
            request = exc
        if self.style == "codex" and isinstance(request, TokenRequest) \
                and request.style == "claude":
            request = dataclasses.replace(request, style="codex")  # Codex's JSON body
        fault = self.faults.pop()
        if fault is not None and fault.kind == "delay" and self._stopping.wait(fault.delay_s):
            return None  # shutting down: answer nothing rather than act after stop()
        if fault is not None and fault.kind in ("status", "drop", "garbage"):
            return self._faulted(fault, request)
        if isinstance(request, BadRequest):
            return self._reject(request, 400, request.code, request.description)
        refusal = self._refuse(request)
        if refusal is not None:
            return refusal
        return self._redeem(request, lost=fault is not None and fault.kind == "lost")

    def _refuse(self, req: TokenRequest) -> Reply | None:
        if req.grant_type != "refresh_token":
            return self._reject(req, 400, "unsupported_grant_type", "only refresh_token")
        secret_required = req.style == "oauth2" and self.client_secret is not None
        if secret_required and req.basic != (self.client_id, self.client_secret):
            return self._reject(req, 401, "invalid_client", "client authentication failed",
                                (("WWW-Authenticate", 'Basic realm="sim"'),))
        if req.client_id != self.client_id:
            return self._reject(req, 401, "invalid_client", "unknown client")
        if req.scope and not set(req.scope.split()) <= set(self.scope.split()):
            return self._reject(req, 400, "invalid_scope", "scope exceeds the grant")
        if not req.refresh_token:
            return self._reject(req, 400, "invalid_request", "refresh_token missing")
        return None

    def _redeem(self, req: TokenRequest, lost: bool) -> Reply | None:
        with self._lock:
            now = self._clock.now()
            try:
                grant = self._ledger.redeem(req.refresh_token, now)
            except GrantRejected as exc:
                self._count(invalid_grants=1)
                if self.style == "codex":
                    return self._codex_refusal(req, exc, now)
                self._record(req, "invalid_grant", 400, now)
                return Reply.json(400, {"error": "invalid_grant", "error_description": exc.reason})
            self._count(rotations=1)
            self._record(req, "lost" if lost else "rotated", 0 if lost else 200, now)
        if lost:
            return None
        if self.style == "codex":
            return Reply.json(200, self._codex_body(grant, now))
        return Reply.json(200, self._grant_body(grant))

    # -- Codex's answers (OpenAI's token endpoint) ----------------------------------------
    def _codex_access(self, meta: Mapping[str, Any], now: float, lifetime_s: float) -> str:
        return jwt.access_token(exp=int(now + lifetime_s), iat=int(now),
                                account_id=str(meta.get("account_id", "")),
                                user_id=str(meta.get("user_id", "")),
                                plan_type=str(meta.get("plan_type", "")),
                                client_id=self.client_id)

    def _codex_body(self, grant: Grant, now: float) -> dict[str, Any]:
        """``{id_token, access_token, refresh_token}``: no expires_in, the JWTs say it; a
        non-rotating server leaves the refresh token out (the client keeps its own)."""
        meta = self._ledger_meta(grant.family)
        body: dict[str, Any] = {
            "id_token": jwt.id_token(iat=int(now), account_id=str(meta.get("account_id", "")),
                                     user_id=str(meta.get("user_id", "")),
                                     email=str(meta.get("email", "")),
                                     plan_type=str(meta.get("plan_type", "")),
                                     client_id=self.client_id),
            "access_token": grant.access_token,
        }
        if self._ledger.rotate:
            body["refresh_token"] = grant.refresh_token
        return body

    def _ledger_meta(self, family: int) -> Mapping[str, Any]:
        with self._lock:
            return self._ledger.meta_of(family)

    def _codex_refusal(self, req: TokenRequest, exc: GrantRejected, now: float) -> Reply:
        """Called holding the lock: a 401 in the shape Codex's classifier reads."""
        refusal = CODEX_REFUSALS.get(exc.kind)
        if refusal is None:  # an unknown token: OAuth's own word, still a 401
            self._record(req, "invalid_grant", 401, now)
            return Reply.json(401, {"error": "invalid_grant", "error_description": exc.reason})
        code, message = refusal
        self._record(req, code, 401, now)
        return Reply.json(401, {"error": {"message": message, "type": "invalid_request_error",
                                          "param": None, "code": code}})

    def _grant_body(self, grant: Grant) -> dict[str, Any]:
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": grant.access_token,
            "expires_in": grant.expires_in,
            "scope": self.scope,
        }
        if self._ledger.rotate:  # a non-rotating server sends none: the client keeps its own
            body["refresh_token"] = grant.refresh_token
        if grant.refresh_token_expires_in is not None:
            body["refresh_token_expires_in"] = grant.refresh_token_expires_in
        return body

    def _faulted(self, fault: Fault, request: TokenRequest | BadRequest) -> Reply | None:
        if fault.kind == "drop":
            self._record_locked(request, "dropped", 0)
            return None
        if fault.kind == "garbage":
            self._record_locked(request, "garbage", 200)
            return Reply(200, b"<html><body>upstream says hello</body></html>",
                         content_type="text/html")
        headers = (("Retry-After", fault.retry_after),) if fault.retry_after is not None else ()
        code = "rate_limit_exceeded" if fault.status == 429 else "server_error"
        self._record_locked(request, f"fault:{fault.status}", fault.status)
        return Reply.json(fault.status, {"error": code}, headers)

    def _reject(self, request: TokenRequest | BadRequest, status: int, code: str,
                description: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        self._record_locked(request, code, status)
        return Reply.json(status, {"error": code, "error_description": description}, headers)

    def _record_locked(self, request: TokenRequest | BadRequest, outcome: str,
                       status: int) -> None:
        with self._lock:
            self._record(request, outcome, status, self._clock.now())

    def _record(self, request: TokenRequest | BadRequest, outcome: str, status: int,
                now: float) -> None:
        if isinstance(request, BadRequest):
            self._log.append(RequestRecord(now, "-", "-", outcome, status))
        else:
            self._log.append(RequestRecord(now, request.style,
                                           fingerprint_of(request.refresh_token), outcome, status))

    def _count(self, **deltas: int) -> None:
        current = asdict(self._stats)
        for key, delta in deltas.items():
            current[key] += delta
        self._stats = ServerStats(**current)

    # -- HTTP routes other than the token endpoint -------------------------------------------
    def handle_check(self, authorization: str | None) -> Reply:
        token = ""
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        if token and self.check_access(token):
            return Reply.json(200, {"ok": True})
        if not token:
            with self._lock:
                self._count(checks=1, unauthorized=1)
        return Reply.json(401, {"error": "invalid_token"},
                          (("WWW-Authenticate", 'Bearer error="invalid_token"'),))

    def handle_admin(self, method: str, path: str, body: bytes) -> Reply:
        if method == "POST" and path == "/_sim/login":
            return self._admin_login(body)
        if method == "GET" and path == "/_sim/stats":
            return Reply.json(200, {"stats": asdict(self.stats()),
                                    "log": [asdict(r) for r in self.log()]})
        if method == "POST" and path == "/_sim/clear-faults":
            self.clear_faults()
            return Reply.json(200, {"pending": 0})
        if method == "POST" and path == "/_sim/fault":
            try:
                obj = json.loads(body or b"{}")
                self.inject(Fault.from_json(obj), int(obj.get("count", 1)))
            except (ValueError, TypeError, AttributeError) as exc:
                return Reply.json(400, {"error": "invalid_request", "error_description": str(exc)})
            return Reply.json(200, {"pending": self.faults.pending()})
        return Reply.json(404, {"error": "not_found"})


    def _admin_login(self, body: bytes) -> Reply:
        if self.style != "codex" or not body.strip():
            return Reply.json(200, self.issue_login())
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        names = ("account_id", "user_id", "email", "plan_type")
        if not isinstance(obj, dict) or not all(isinstance(obj.get(n, ""), str) for n in names):
            return Reply.json(400, {"error": "invalid_request",
                                    "error_description": "identity fields must be strings"})
        return Reply.json(200, self.issue_login(**{n: obj[n] for n in names if n in obj}))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives a request.
    protocol_version = "HTTP/1.0"
    timeout = 5.0  # a client that connects and sends nothing cannot hold a thread for long

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is the record; stderr stays quiet

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path
        sim = self.server.sim
        body = self._body()
        if method == "POST" and path == TOKEN_PATH:
            reply = sim.handle_token(self.headers.get("Content-Type", ""),
                                     self.headers.get("Authorization"), body)
        elif method == "GET" and path == CHECK_PATH:
            reply = sim.handle_check(self.headers.get("Authorization"))
        else:
            reply = sim.handle_admin(method, path, body)
        if reply is None:
            self._drop()
        else:
            self._send(reply)

    def _body(self) -> bytes:
        try:
            length = min(int(self.headers.get("Content-Length", "0")), MAX_BODY)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            pass  # the client went away (it timed out during a delay): nothing to tell it


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread: no thread outlives stop()

    def __init__(self, sim: OAuthServer, port: int) -> None:
        self.sim = sim
        super().__init__(("127.0.0.1", port), _Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.sim.server",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=8 * 3600,
                        help="access token lifetime, seconds")
    parser.add_argument("--refresh-lifetime", type=float, default=None,
                        help="refresh token lifetime, seconds (default: none)")
    parser.add_argument("--client-id", default=None,
                        help="default: Claude Code's, or Codex's with --style codex")
    parser.add_argument("--style", choices=["claude", "codex"], default="claude",
                        help="codex: OpenAI's token endpoint as Codex CLI meets it")
    parser.add_argument("--client-secret", default=None)
    parser.add_argument("--no-rotate", action="store_true",
                        help="refresh tokens stay valid and none is returned")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # handlers only set a flag

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server = OAuthServer(access_lifetime_s=args.lifetime,
                         refresh_lifetime_s=args.refresh_lifetime, client_id=args.client_id,
                         client_secret=args.client_secret, rotate=not args.no_rotate,
                         port=args.port, style=args.style)
    with server:
        print(server.url, flush=True)
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
