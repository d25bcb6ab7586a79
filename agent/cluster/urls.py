"""Which Redis URLs credsync accepts, as a value (no redis import here).

``redis://`` only to a loopback host (an SSH or stunnel tunnel listens there too) and
``unix://`` sockets; ``rediss://`` (TLS, certificate and host name verified) everywhere else.
The URL is parsed here rather than by redis-py's ``from_url``, which takes connection options
from the query string: ``?ssl_cert_reqs=none`` would switch verification off. So no query is
accepted but ``db`` on a socket, and never a password (it would be shown in status and
recorded in the state dir): the password lives in a 0600 file or the keychain.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

from agent.errors import ConfigError

DEFAULT_PORT = 6379
PASSWORD_FIX = ("remove it from the URL and put it in a 0600 file named by "
                "[cluster] password_file, or in the keychain item credsync / redis:<URL>")


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: a TCP host (plain or TLS) or a unix socket, a db number, an ACL user."""

    scheme: str  # redis | rediss | unix
    host: str = ""
    port: int = DEFAULT_PORT
    socket_path: str = ""
    db: int = 0
    username: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def shown(self) -> str:
        """The URL as it may be shown and recorded (it holds no secret)."""
        user = f"{urllib.parse.quote(self.username, safe='')}@" if self.username else ""
        if self.scheme == "unix":
            query = f"?db={self.db}" if self.db else ""
            return f"unix://{user}{self.socket_path}{query}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}/{self.db}"

    @property
    def password_account(self) -> str:
        """credsync's keychain item (service ``credsync``) that may hold this Redis' password."""
        return f"redis:{self.shown}"


def _problem(field: str, problem: str, fix: str) -> ConfigError:
    return ConfigError([f"{field}: {problem}; {fix}"])


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_redis_url(url: str, field: str) -> RedisTarget:
    """The target ``url`` names, or a one-line ConfigError naming ``field`` and the fix.
    The message never repeats the URL as given (it may hold a password)."""
    if not url or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise _problem(field, "an empty URL, or one with spaces or control characters",
                       "write it as rediss://host:port/db")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _problem(field, f"not a valid URL ({exc})",
                       "write it as rediss://host:port/db") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise _problem(field, f"scheme {scheme or '(none)'}:// is not a Redis URL",
                       "use rediss://host:port/db (or redis:// to a loopback host, unix:///path)")
    if parts.password is not None:
        raise _problem(field, "the URL holds a password", PASSWORD_FIX)
    if parts.fragment:
        raise _problem(field, "the URL holds a #fragment", "remove it")
    username = urllib.parse.unquote(parts.username or "")
    if scheme == "unix":
        return _unix(parts, field, username)
    return _tcp(parts, scheme, port, field, username)


def _unix(parts: urllib.parse.SplitResult, field: str, username: str) -> RedisTarget:
    if parts.hostname:
        raise _problem(field, "a unix:// URL names a socket path, not a host",
                       "write it as unix:///path/to/redis.sock (three slashes)")
    if not parts.path.startswith("/"):
        raise _problem(field, "the socket path is not absolute",
                       "write it as unix:///path/to/redis.sock")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if set(query) - {"db"}:
        raise _problem(field, "the URL has query options other than db",
                       "remove them (credsync sets the connection options itself)")
    db = _db(query.get("db", ["0"])[-1], field)
    return RedisTarget("unix", socket_path=parts.path, db=db, username=username)


def _tcp(parts: urllib.parse.SplitResult, scheme: str, port: int | None, field: str,
         username: str) -> RedisTarget:
    host = parts.hostname or ""
    if not host or not host.isascii():
        raise _problem(field, "no host, or a host that is not ASCII",
                       "write it as rediss://host:port/db (an international name in xn-- form)")
    if parts.query:
        raise _problem(field, "the URL has a ?query",
                       "remove it (credsync sets the connection options itself; the db is "
                       "the path, /0)")
    if scheme == "redis" and not is_loopback(host):
        raise _problem(field, f"redis:// sends the password and every envelope in clear text "
                              f"to {host}", "use rediss:// (TLS) for any host but loopback "
                                            "(127.0.0.1, ::1, localhost) or a unix socket")
    if port == 0:
        raise _problem(field, "port 0", "name the port Redis listens on (default 6379)")
    path = parts.path.strip("/")
    db = _db(path or "0", field)
    return RedisTarget(scheme, host=host, port=port or DEFAULT_PORT, db=db, username=username)


def _db(text: str, field: str) -> int:
    if not text.isdigit() or len(text) > 5:
        raise _problem(field, "the database must be a number", "end the URL with /0 (or /N)")
    return int(text)
