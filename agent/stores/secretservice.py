"""The Secret Service keychain (gnome-keyring, KeePassXC...) over one kept D-Bus connection.

Why not keyring's ``SecretService.Keyring``: it opens a new D-Bus connection and negotiates a new
encrypted session (a Diffie-Hellman exchange) on every call, about 13 ms each; a propagation
round makes three calls. Keeping the connection, the default collection and the session answers
a read in about 1.3 ms.

Items are keyring's, both ways: same collection (the default one), same search attributes
(``service``, ``username``), same written attributes and label, same errors (``KeyringLocked``,
``PasswordDeleteError``, ``InitError``). This is the only module that imports ``secretstorage``
or ``jeepney``.

What may go stale while kept, and what is done about it:
- the lock: checked on every call (a user may lock the keychain at any time);
- the daemon: its bus name may have a new owner (restarted), whose sessions are not ours; the
  owner is compared on every call;
- the bus: ``DBUS_SESSION_BUS_ADDRESS`` is compared with its value at connect time;
- anything else (bus dropped, session or collection gone): any error on a kept connection closes
  it and the call is tried once more on a fresh one. An error on a fresh connection is the answer.
  Errors that are the daemon's answer (locked, no such item) are not retried: a retry would show
  a dismissed unlock prompt again.

Not thread-safe: one thread at a time (KeychainCalls' worker), since calls share one connection.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import secretstorage
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, Proxy
from keyring.errors import InitError, KeyringLocked, PasswordDeleteError
from secretstorage.collection import Collection
from secretstorage.exceptions import LockedException, PromptDismissedException
from secretstorage.item import Item

__all__ = ["SecretServiceKeyring"]

BUS_NAME = "org.freedesktop.secrets"
ADDRESS_VARIABLE = "DBUS_SESSION_BUS_ADDRESS"
APPID = "Python keyring library"  # keyring's SecretService.Keyring.appid: its items are ours
# The daemon's answers: retrying them on a new connection would only ask (or prompt) again.
ANSWERS: tuple[type[Exception], ...] = (KeyringLocked, PasswordDeleteError,
                                        PromptDismissedException, LockedException,
                                        UnicodeDecodeError)

T = TypeVar("T")


class DaemonReplaced(Exception):
    """The Secret Service bus name changed owner since the session was opened."""


@dataclass
class Link:
    """A kept connection; the secret session lives in ``collection.session`` (None until a call
    first needs one: secretstorage opens it there, or on an item, from where it is kept)."""

    connection: DBusConnection
    collection: Collection
    owner: str  # unique bus name of the daemon that the session belongs to
    address: str | None  # DBUS_SESSION_BUS_ADDRESS when connected


def _query(service: str, username: str) -> dict[str, str]:
    return {"username": username, "service": service}  # keyring's "default" scheme


def _owner(connection: DBusConnection) -> str:
    # A round trip to the bus daemon only, far cheaper than a lost session's failed call.
    (name,) = Proxy(message_bus, connection).GetNameOwner(BUS_NAME)
    return str(name)


def _default_collection(connection: DBusConnection) -> Collection:
    try:
        return secretstorage.get_default_collection(connection)
    except secretstorage.SecretStorageException as exc:
        raise InitError(f"Failed to create the collection: {exc}.") from exc


def _ensure_unlocked(collection: Collection) -> None:
    if collection.is_locked():
        collection.unlock()
        if collection.is_locked():  # the user dismissed the prompt
            raise KeyringLocked("Failed to unlock the collection!")


def _secret(item: Item) -> bytes:
    try:
        return item.get_secret()  # checks the item's lock itself: no round trip of ours first
    except LockedException:
        item.unlock()
        if item.is_locked():
            raise KeyringLocked("Failed to unlock the item!") from None
        return item.get_secret()


def _get(collection: Collection, service: str, username: str) -> str | None:
    for item in collection.search_items(_query(service, username)):
        secret = _secret(item)
        if collection.session is None:
            collection.session = item.session  # the session the item opened: keep it
        return secret.decode("utf-8")
    return None


def _set(collection: Collection, service: str, username: str, password: str) -> None:
    attributes = {**_query(service, username), "application": APPID}
    label = f"Password for '{username}' on '{service}'"
    collection.create_item(label, attributes, password.encode("utf-8"), replace=True)


def _delete(collection: Collection, service: str, username: str) -> None:
    for item in collection.search_items(_query(service, username)):
        item.delete()  # only the first, as keyring does
        return
    raise PasswordDeleteError("No such password!")


class SecretServiceKeyring:
    """A keyring backend (get/set/delete_password) for the Secret Service that keeps its D-Bus
    connection, default collection and secret session between calls. One thread at a time."""

    def __init__(self) -> None:
        self._link: Link | None = None
        self.connections_opened = 0  # connections made so far (reuse shows as 1)

    @property
    def connected(self) -> bool:
        return self._link is not None

    def get_password(self, service: str, username: str) -> str | None:
        return self._call(lambda c: _get(c, service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self._call(lambda c: _set(c, service, username, password))

    def delete_password(self, service: str, username: str) -> None:
        self._call(lambda c: _delete(c, service, username))

    def close(self) -> None:
        """Close the connection (the daemon drops our session with it); a later call reconnects."""
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(OSError):  # an already broken socket is closed all the same
                link.connection.close()

    # --- the kept link ---

    def _call(self, op: Callable[[Collection], T]) -> T:
        link = self._kept()
        if link is not None:
            try:
                if _owner(link.connection) != link.owner:
                    raise DaemonReplaced(f"{BUS_NAME} has a new owner")
                return self._run(link, op)
            except ANSWERS:
                raise
            except Exception:
                self.close()  # stale in some way: once more on a fresh connection, below
        return self._run(self._open(), op)

    @staticmethod
    def _run(link: Link, op: Callable[[Collection], T]) -> T:
        _ensure_unlocked(link.collection)
        return op(link.collection)

    def _kept(self) -> Link | None:
        link = self._link
        if link is not None and link.address != os.environ.get(ADDRESS_VARIABLE):
            self.close()  # the process now talks to another bus: the kept one is someone else's
            return None
        return link

    def _open(self) -> Link:
        address = os.environ.get(ADDRESS_VARIABLE)
        connection = secretstorage.dbus_init()
        self.connections_opened += 1
        try:
            collection = _default_collection(connection)
            owner = _owner(connection)  # after the collection: that call may activate the daemon
        except BaseException:
            connection.close()
            raise
        self._link = Link(connection, collection, owner, address)
        return self._link
