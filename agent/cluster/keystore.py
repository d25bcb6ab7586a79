"""The cluster's secrets on this machine: the cluster key and the Redis password.

The cluster key (32 random bytes per login) is kept only on members: in credsync's keychain
item (service ``credsync``, account ``cluster:<login id>``), else in ``cluster.key`` (0600) in
the login's scope dir. The Redis password is never in config.toml: it comes from the file
``[cluster] password_file`` names, else from the keychain item ``credsync`` /
``redis:<URL>``. A secret file that anyone but its owner could read is refused, not used: it
may have been read already, and using it would hide that.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent import crypto
from agent.errors import ClusterError, KeychainUnavailable, StoreError
from agent.fsutil import atomic_write, ensure_private_dir
from agent.stores.keychain import OWN_SERVICE, KeychainBackend, KeychainCalls

MAX_SECRET_BYTES = 4096
KEYCHAIN, FILE = "keychain", "file"


def read_private_file(path: Path, field: str) -> bytes:
    """The bytes of a secret file that only its owner (this user, or root) can read."""
    fix = f"chmod 600 {path}"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ClusterError(f"{field}: cannot open {path} ({exc.strerror or exc}); check the "
                           "path and its permissions") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ClusterError(f"{field}: {path} is not a regular file; point it at a file")
        if hasattr(os, "getuid"):
            if st.st_uid not in (os.getuid(), 0):
                raise ClusterError(f"{field}: {path} belongs to another user (uid "
                                   f"{st.st_uid}); use a file of your own, mode 0600")
            if st.st_mode & 0o077:
                raise ClusterError(f"{field}: {path} can be read or changed by others (mode "
                                   f"{stat.S_IMODE(st.st_mode):04o}); {fix}, and change the "
                                   "secret if others may have read it")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise ClusterError(f"{field}: {path} is too big to be a secret; check the path")
    return data


class Keychain:
    """credsync's own keychain items, each call with a deadline (a locked keychain can block
    on an unlock prompt)."""

    def __init__(self, backend: KeychainBackend, timeout_s: float = 3.0) -> None:
        self.backend = backend
        self.calls = KeychainCalls(timeout_s)

    def get(self, account: str) -> str | None:
        return self.calls.call(lambda: self.backend.get_password(OWN_SERVICE, account), "read")

    def set(self, account: str, value: str) -> None:
        self.calls.call(lambda: self.backend.set_password(OWN_SERVICE, account, value), "write")

    def delete(self, account: str) -> None:
        if self.get(account) is not None:
            self.calls.call(lambda: self.backend.delete_password(OWN_SERVICE, account),
                            "delete")

    def close(self) -> None:
        self.calls.close()


def redis_password(password_file: Path | None, keychain: Keychain | None,
                   account: str) -> str | None:
    """The Redis password: the file if one is configured (it must exist), else the keychain
    item if there is one, else None (no AUTH)."""
    if password_file is not None:
        raw = read_private_file(password_file, "cluster.password_file")
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise ClusterError(f"cluster.password_file: {password_file} is not UTF-8 text; "
                               "write the password alone on one line") from exc
    if keychain is None:
        return None
    try:
        return keychain.get(account)
    except KeychainUnavailable:
        return None  # no keychain here: no password from it (Redis says if one is needed)


class KeyStore:
    """Saves and loads one login's cluster key: keychain first, else a 0600 file."""

    def __init__(self, scope_dir: Path, keychain: Keychain | None) -> None:
        self.file = scope_dir / "cluster.key"
        self.keychain = keychain

    @staticmethod
    def account(login_id: str) -> str:
        return f"cluster:{login_id}"

    def save(self, login_id: str, key: bytes) -> str:
        """Where the key went: ``keychain``, or ``file`` when there is no usable keychain."""
        if self.keychain is not None:
            try:
                self.keychain.set(self.account(login_id), key.hex())
                return KEYCHAIN
            except KeychainUnavailable:
                pass  # a machine without a keychain still joins: the file is the fallback
        ensure_private_dir(self.file.parent)
        atomic_write(self.file, key.hex().encode() + b"\n")
        return FILE

    def load(self, login_id: str, where: str) -> bytes:
        if where == KEYCHAIN:
            text = self._from_keychain(login_id)
        else:
            text = read_private_file(self.file, "cluster key").decode(errors="replace")
        try:
            key = bytes.fromhex(text.strip())
        except ValueError as exc:
            raise ClusterError("the cluster key is damaged; run credsync cluster leave, then "
                               "join again with a new code") from exc
        if len(key) != crypto.KEY_BYTES:
            raise ClusterError("the cluster key has the wrong size; leave and join again")
        return key

    def _from_keychain(self, login_id: str) -> str:
        if self.keychain is None:
            raise ClusterError("the cluster key is in the keychain, but [claude] keychain is "
                               "off; turn it on, or leave and join again")
        try:
            text = self.keychain.get(self.account(login_id))
        except KeychainUnavailable as exc:
            raise ClusterError(f"the cluster key is in the keychain, which cannot be used now "
                               f"({exc}); unlock it, or run inside the desktop login") from exc
        if text is None:
            raise ClusterError(f"the keychain has no item credsync / {self.account(login_id)}; "
                               "leave and join again with a new code")
        return text

    def delete(self, login_id: str, where: str) -> None:
        if where == KEYCHAIN and self.keychain is not None:
            try:
                self.keychain.delete(self.account(login_id))
            except (KeychainUnavailable, StoreError) as exc:
                raise ClusterError(f"cannot remove the cluster key from the keychain ({exc}); "
                                   "unlock it and run credsync cluster leave again") from exc
        self.file.unlink(missing_ok=True)

