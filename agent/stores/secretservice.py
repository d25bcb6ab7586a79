"""The Secret Service keychain (gnome-keyring, KeePassXC...) over one kept D-Bus connection.

Why not keyring's ``SecretService.Keyring``: it opens a new D-Bus connection and negotiates a new
encrypted session (a Diffie-Hellman exchange) on every call, about 13 ms each; a propagation
round makes three calls. Keeping the connection, the default collection and the session, and
calling the Secret Service methods directly, a read is three D-Bus round trips (about 1.5 ms)
and a write two.

Items are keyring's, both ways: same collection (the default one), same search attributes
(``service``, ``username``), same written attributes and label, same errors (``KeyringLocked``,
``PasswordDeleteError``, ``InitError``). This is the only module that imports ``secretstorage``,
``jeepney`` or ``cryptography`` (which decrypts the secrets, as secretstorage does).

What may go stale while kept, and what is done about it:
- the lock: a user may lock the keychain at any time; the daemon then answers IsLocked, and the
  collection is unlocked (a prompt) and the call made again, as keyring does up front;
- the daemon: its bus name may have a new owner (restarted), whose sessions are not ours; the
  owner is compared on every call;
- the bus: ``DBUS_SESSION_BUS_ADDRESS`` is compared with its value at connect time;
- anything else (bus dropped, session or collection gone, a secret that does not decrypt with
  our key): any error on a kept connection closes it and the call is tried once more on a fresh
  one. An error on a fresh connection is the answer.
  Errors that are the daemon's answer (locked, no such item) are not retried: a retry would show
  a dismissed unlock prompt again.

Not thread-safe: one thread at a time (KeychainCalls' worker), since calls share one connection.

``RustKeyringItems`` reaches, over the same kept connection, items in the scheme of keyring-rs
3.x (what the Codex CLI writes): attributes ``service``, ``username``, ``target=default``,
``application=rust-keyring``, label ``<username>@<service>:default (keyring v3.6.3)``. It finds
an item as keyring-rs 3.6.3 does (``SsCredential::map_matching_items``): service, username and
target across every collection; when none matches, service and username in the default
collection (items written without ``target``); more than one match is an error
(``AmbiguousItem``), as it is for keyring-rs. A write sets the secret of the one matching item,
else creates the item with keyring-rs's attributes and label in the default collection, so that
keyring-rs's search (which requires ``target``) finds it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import secretstorage
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, Proxy
from jeepney.wrappers import DBusErrorResponse
from keyring.errors import InitError, KeyringLocked, PasswordDeleteError
from secretstorage.defines import SS_PREFIX
from secretstorage.dhcrypto import Session
from secretstorage.exceptions import LockedException, PromptDismissedException
from secretstorage.util import (
    DBusAddressWrapper,
    exec_prompt,
    format_secret,
    open_session,
    unlock_objects,
)

__all__ = ["AmbiguousItem", "RustKeyringItems", "SecretServiceKeyring"]

BUS_NAME = "org.freedesktop.secrets"
ADDRESS_VARIABLE = "DBUS_SESSION_BUS_ADDRESS"
APPID = "Python keyring library"  # keyring's SecretService.Keyring.appid: its items are ours
COLLECTION_IFACE = SS_PREFIX + "Collection"
SERVICE_PATH = "/org/freedesktop/secrets"
SERVICE_IFACE = SS_PREFIX + "Service"
# keyring-rs's controlled attributes; the label names the version that wrote the item (Codex
# 0.171.0 is built with 3.6.3). The version in a label is never searched by.
RUST_TARGET = "default"
RUST_APPLICATION = "rust-keyring"
RUST_KEYRING_VERSION = "3.6.3"
ITEM_IFACE = SS_PREFIX + "Item"
IS_LOCKED = SS_PREFIX + "Error.IsLocked"
class AmbiguousItem(Exception):
    """More than one item matches (keyring-rs refuses to choose, and so does credsync)."""


# The daemon's answers: retrying them on a new connection would only ask (or prompt) again.
ANSWERS: tuple[type[Exception], ...] = (KeyringLocked, PasswordDeleteError,
                                        PromptDismissedException, LockedException,
                                        UnicodeDecodeError, AmbiguousItem)

T = TypeVar("T")


class DaemonReplaced(Exception):
    """The Secret Service bus name changed owner since the session was opened."""


class BadSecret(Exception):
    """A secret that does not decrypt with our session key: the session is not ours (any more)."""


@dataclass
class Link:
    """A kept connection with its default collection and secret session."""

    connection: DBusConnection
    collection: DBusAddressWrapper  # the default collection
    session: Session
    owner: str  # unique bus name of the daemon that the session belongs to
    address: str | None  # DBUS_SESSION_BUS_ADDRESS when connected


def _query(service: str, username: str) -> dict[str, str]:
    return {"username": username, "service": service}  # keyring's "default" scheme


def _owner(connection: DBusConnection) -> str:
    # A round trip to the bus daemon only, far cheaper than a lost session's failed call.
    (name,) = Proxy(message_bus, connection).GetNameOwner(BUS_NAME)
    return str(name)


def _default_collection(connection: DBusConnection) -> DBusAddressWrapper:
    try:
        path = secretstorage.get_default_collection(connection).collection_path
    except secretstorage.SecretStorageException as exc:
        raise InitError(f"Failed to create the collection: {exc}.") from exc
    return DBusAddressWrapper(path, COLLECTION_IFACE, connection)


# The operations call the Secret Service methods themselves rather than through secretstorage's
# Collection and Item objects, which ask the daemon for a label and the lock state around every
# call: a read is two calls instead of five, a write one instead of four. A locked collection
# shows up as the daemon's IsLocked error (see ``_unlocked``).

def _decrypt(session: Session, secret: tuple[Any, ...]) -> bytes:
    _, iv, value, _ = secret
    if not session.encrypted:
        return bytes(value)
    assert session.aes_key is not None
    decryptor = Cipher(algorithms.AES(session.aes_key), modes.CBC(bytes(iv))).decryptor()
    padded = decryptor.update(bytes(value)) + decryptor.finalize()
    pad = padded[-1] if padded else 0
    if not 1 <= pad <= 16 or padded[-pad:] != bytes((pad,)) * pad:
        raise BadSecret("the secret does not decrypt with this session's key")
    return padded[:-pad]


def _search(link: Link, service: str, username: str) -> list[str]:
    (paths,) = link.collection.call("SearchItems", "a{ss}", _query(service, username))
    return [str(p) for p in paths]


def _get(link: Link, service: str, username: str) -> str | None:
    for path in _search(link, service, username):
        item = DBusAddressWrapper(path, ITEM_IFACE, link.connection)
        (secret,) = item.call("GetSecret", "o", link.session.object_path)
        return _decrypt(link.session, secret).decode("utf-8")
    return None


def _prompt(link: Link, prompt: str) -> None:
    if len(prompt) > 1:  # "/" means none was needed
        dismissed, _ = exec_prompt(link.connection, prompt)
        if dismissed:
            raise PromptDismissedException("Prompt dismissed.")


def _set(link: Link, service: str, username: str, password: str) -> None:
    attributes = {**_query(service, username), "application": APPID}
    properties = {SS_PREFIX + "Item.Label": ("s", f"Password for '{username}' on '{service}'"),
                  SS_PREFIX + "Item.Attributes": ("a{ss}", attributes)}
    secret = format_secret(link.session, password.encode("utf-8"), "text/plain")
    _, prompt = link.collection.call("CreateItem", "a{sv}(oayays)b", properties, secret, True)
    _prompt(link, prompt)


def _secret_of(link: Link, path: str) -> str:
    item = DBusAddressWrapper(path, ITEM_IFACE, link.connection)
    (secret,) = item.call("GetSecret", "o", link.session.object_path)
    return _decrypt(link.session, secret).decode("utf-8")


# --- keyring-rs's scheme (RustKeyringItems) ---

def _rust_attributes(service: str, username: str) -> dict[str, str]:
    return {"service": service, "username": username, "target": RUST_TARGET,
            "application": RUST_APPLICATION}


def _rust_find(link: Link, service: str, username: str) -> str | None:
    """The one item keyring-rs would use, unlocked; None when there is none."""
    wanted = {"service": service, "username": username, "target": RUST_TARGET}
    everywhere = DBusAddressWrapper(SERVICE_PATH, SERVICE_IFACE, link.connection)
    unlocked, locked = everywhere.call("SearchItems", "a{ss}", wanted)
    paths = [str(p) for p in (*unlocked, *locked)]
    if not paths:  # keyring-rs's fallback: an item without target, in the default collection
        (found,) = link.collection.call("SearchItems", "a{ss}", _query(service, username))
        paths = [str(p) for p in found]
    if len(paths) > 1:
        raise AmbiguousItem(f"{len(paths)} Secret Service items match service={service!r} "
                            f"username={username!r}; remove all but one")
    if paths and paths[0] in {str(p) for p in locked} and \
            unlock_objects(link.connection, paths):
        raise KeyringLocked("Failed to unlock the item!")
    return paths[0] if paths else None


def _rust_get(link: Link, service: str, username: str) -> str | None:
    path = _rust_find(link, service, username)
    return _secret_of(link, path) if path is not None else None


def _rust_set(link: Link, service: str, username: str, password: str) -> None:
    secret = format_secret(link.session, password.encode("utf-8"), "text/plain")
    path = _rust_find(link, service, username)
    if path is not None:  # keyring-rs updates the item it finds rather than adding one
        DBusAddressWrapper(path, ITEM_IFACE, link.connection).call("SetSecret", "(oayays)",
                                                                   secret)
        return
    label = f"{username}@{service}:{RUST_TARGET} (keyring v{RUST_KEYRING_VERSION})"
    properties = {SS_PREFIX + "Item.Label": ("s", label),
                  SS_PREFIX + "Item.Attributes": ("a{ss}", _rust_attributes(service, username))}
    _, prompt = link.collection.call("CreateItem", "a{sv}(oayays)b", properties, secret, True)
    _prompt(link, prompt)


def _rust_delete(link: Link, service: str, username: str) -> None:
    path = _rust_find(link, service, username)
    if path is None:
        raise PasswordDeleteError("No such password!")
    (prompt,) = DBusAddressWrapper(path, ITEM_IFACE, link.connection).call("Delete", "")
    _prompt(link, prompt)


def _delete(link: Link, service: str, username: str) -> None:
    for path in _search(link, service, username):
        (prompt,) = DBusAddressWrapper(path, ITEM_IFACE, link.connection).call("Delete", "")
        _prompt(link, prompt)  # only the first, as keyring does
        return
    raise PasswordDeleteError("No such password!")


def _unlock(link: Link) -> None:
    # As keyring does before every call; here only when the daemon said the collection is
    # locked. Unlocking asks the user (a prompt), who may refuse.
    path = link.collection.object_path
    dismissed = unlock_objects(link.connection, [path])
    if dismissed or link.collection.get_property("Locked"):
        raise KeyringLocked("Failed to unlock the collection!")


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

    def rust_keyring_items(self) -> RustKeyringItems:
        """The items of keyring-rs's scheme, over this connection (same thread rule)."""
        return RustKeyringItems(self)

    def close(self) -> None:
        """Close the connection (the daemon drops our session with it); a later call reconnects."""
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(OSError):  # an already broken socket is closed all the same
                link.connection.close()

    # --- the kept link ---

    def _call(self, op: Callable[[Link], T]) -> T:
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
    def _run(link: Link, op: Callable[[Link], T]) -> T:
        try:
            return op(link)
        except DBusErrorResponse as exc:
            if exc.name != IS_LOCKED:
                raise
        _unlock(link)
        try:
            return op(link)
        except DBusErrorResponse as exc:
            if exc.name == IS_LOCKED:  # locked again meanwhile: the user's answer stands
                raise KeyringLocked("Failed to unlock the collection!") from exc
            raise

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
            session = open_session(connection)
        except BaseException:
            connection.close()
            raise
        self._link = Link(connection, collection, session, owner, address)
        return self._link


class RustKeyringItems:
    """A keyring backend (get/set/delete_password) for items in keyring-rs's scheme, such as
    the Codex CLI's login, over a ``SecretServiceKeyring``'s kept connection."""

    def __init__(self, keyring: SecretServiceKeyring) -> None:
        self.keyring = keyring

    def get_password(self, service: str, username: str) -> str | None:
        return self.keyring._call(lambda c: _rust_get(c, service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.keyring._call(lambda c: _rust_set(c, service, username, password))

    def delete_password(self, service: str, username: str) -> None:
        self.keyring._call(lambda c: _rust_delete(c, service, username))
