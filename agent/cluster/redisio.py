"""Redis, through redis-py: the only module that imports ``redis``.

Every call has a deadline: an explicit connect and socket timeout, and redis-py's retries off
(``Retry(NoBackoff(), 0)``): its defaults retry with backoff, which turned a 1 s socket timeout
into 15 s (measured). A caller that wants to try again does so itself, on its own schedule.
Every redis-py error comes out as a ``ClusterError`` (``ClusterUnavailable`` when Redis could
not be reached or did not answer in time), naming the URL without secrets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from agent.cluster import scripts
from agent.cluster.urls import RedisTarget
from agent.errors import ClusterError, ClusterUnavailable

__all__ = ["Message", "RedisLink", "Subscription", "Timeouts"]


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 2.0
    socket_s: float = 2.0


@dataclass(frozen=True)
class Message:
    """One thing read from a subscription: ``kind`` is subscribe, message or pong."""

    kind: str
    data: bytes


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class _Errors:
    """Maps redis-py's exceptions to credsync's, with the URL (no secret) and the fix."""

    def __init__(self, target: RedisTarget, timeouts: Timeouts) -> None:
        self.where = target.shown
        self.timeouts = timeouts

    @contextlib.contextmanager
    def mapped(self, what: str) -> Iterator[None]:
        try:
            yield
        except redis.exceptions.AuthenticationError as exc:
            raise ClusterError(f"Redis at {self.where} refused the login ({_text(exc)}); check "
                               "the user in the URL and the password ([cluster] password_file "
                               "or the keychain item credsync / redis:<URL>)") from exc
        except redis.exceptions.TimeoutError as exc:
            raise ClusterUnavailable(f"Redis at {self.where}: no answer to {what} within "
                                     f"{self.timeouts.socket_s:g} s") from exc
        except redis.exceptions.ConnectionError as exc:
            raise ClusterUnavailable(f"cannot reach Redis at {self.where} ({_text(exc)}); "
                                     "check the URL and that Redis runs") from exc
        except redis.exceptions.NoPermissionError as exc:
            raise ClusterError(f"Redis at {self.where} does not let this user run {what} "
                               f"({_text(exc)}); grant the ACL in the README") from exc
        except redis.exceptions.RedisError as exc:
            raise ClusterError(f"Redis at {self.where} refused {what}: {_text(exc)}") from exc
        except OSError as exc:  # TLS set-up, a socket that went away under redis-py
            raise ClusterUnavailable(f"cannot reach Redis at {self.where} "
                                     f"({exc.strerror or exc})") from exc


def _client(target: RedisTarget, password: str | None, timeouts: Timeouts,
            ca_file: Path | None, client_name: str) -> redis.Redis:
    options: dict[str, Any] = {
        "db": target.db, "username": target.username or None, "password": password,
        "socket_timeout": timeouts.socket_s, "socket_connect_timeout": timeouts.connect_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0, "client_name": client_name, "protocol": 3,
        "max_connections": 4,
    }
    if target.scheme == "unix":
        return redis.Redis(unix_socket_path=target.socket_path, **options)
    if target.tls:
        options.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True,
                       ssl_ca_certs=str(ca_file) if ca_file else None)
    return redis.Redis(host=target.host, port=target.port, **options)


class RedisLink:
    """One member's commands to Redis (thread-safe: redis-py's pool hands each call a
    connection); subscriptions get connections of their own."""

    def __init__(self, target: RedisTarget, password: str | None, timeouts: Timeouts,
                 ca_file: Path | None = None, client_name: str = "credsync") -> None:
        self.target = target
        self.timeouts = timeouts
        self.errors = _Errors(target, timeouts)
        self._redis = _client(target, password, timeouts, ca_file, client_name)
        self._scripts = {name: self._redis.register_script(source)
                         for name, source in scripts.ALL.items()}

    def close(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            self._redis.close()

    def ping(self) -> None:
        with self.errors.mapped("PING"):
            self._redis.ping()

    def time_ms(self) -> int:
        with self.errors.mapped("TIME"):
            seconds, micros = self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def get(self, key: str) -> bytes | None:
        with self.errors.mapped("GET"):
            value = self._redis.get(key)
        return value if isinstance(value, bytes) or value is None else _text(value).encode()

    def getdel(self, key: str) -> bytes | None:
        with self.errors.mapped("GETDEL"):
            value = self._redis.getdel(key)
        return value if isinstance(value, bytes) or value is None else _text(value).encode()

    def set_new(self, key: str, value: bytes | str, ttl_s: float) -> bool:
        """SET NX with a TTL; False when the key exists."""
        with self.errors.mapped("SET"):
            return bool(self._redis.set(key, value, nx=True, px=max(1, int(ttl_s * 1000))))

    def set(self, key: str, value: bytes | str) -> None:
        with self.errors.mapped("SET"):
            self._redis.set(key, value)

    def hash(self, key: str) -> dict[str, bytes]:
        with self.errors.mapped("HGETALL"):
            raw = self._redis.hgetall(key)
        return {_text(k): v if isinstance(v, bytes) else _text(v).encode()
                for k, v in raw.items()}

    def hdel(self, key: str, field: str) -> None:
        with self.errors.mapped("HDEL"):
            self._redis.hdel(key, field)

    def delete(self, *keys: str) -> None:
        with self.errors.mapped("DEL"):
            self._redis.delete(*keys)

    def run(self, name: str, keys: Sequence[str], args: Sequence[str | int | bytes]) -> Any:
        """One of ``scripts.ALL``, atomically; the reply with bytes decoded to str."""
        with self.errors.mapped(f"the {name} script"):
            reply = self._scripts[name](keys=list(keys), args=list(args))
        return _decoded(reply)

    def subscription(self, channel: str) -> Subscription:
        return Subscription(self._redis, channel, self.errors)


def _decoded(reply: Any) -> Any:
    if isinstance(reply, bytes):
        return reply.decode(errors="replace")
    if isinstance(reply, list):
        return [_decoded(item) for item in reply]
    return reply


class Subscription:
    """One pub/sub connection to one channel. ``get`` waits at most its timeout; ``echo``
    sends a PING down this very connection, whose pong proves the link works both ways
    (redis-py's health check did not find a half-open link in 8 s; an echo does)."""

    def __init__(self, client: redis.Redis, channel: str, errors: _Errors) -> None:
        self.channel = channel
        self.errors = errors
        self._pubsub = client.pubsub()  # type: ignore[no-untyped-call]

    def subscribe(self) -> None:
        with self.errors.mapped("SUBSCRIBE"):
            self._pubsub.subscribe(self.channel)

    def echo(self, payload: str) -> None:
        with self.errors.mapped("PING"):
            self._pubsub.ping(payload)

    def get(self, timeout_s: float) -> Message | None:
        with self.errors.mapped("reading the subscription"):
            raw = self._pubsub.get_message(timeout=timeout_s)
        if raw is None:
            return None
        data = raw.get("data")
        return Message(_text(raw.get("type")),
                       data if isinstance(data, bytes) else _text(data).encode())

    def close(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            self._pubsub.close()
