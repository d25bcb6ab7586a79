"""Authenticated encryption and key derivation: the only module that imports ``cryptography``.

Used to open Claude Code's macOS overflow items (AES-256-GCM, read only) and for the cluster's
envelopes. Every failure comes out as ``CryptoError``: a blob that does not open is a reading,
never a traceback.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import CredsyncError

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32


class CryptoError(CredsyncError):
    """A blob that does not open (wrong key, tampered, cut short) or a key of the wrong size."""


def _aead(key: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        raise CryptoError(f"an AES-256 key has {KEY_BYTES} bytes, not {len(key)}")
    return AESGCM(key)


def seal(key: bytes, plaintext: bytes, aad: bytes | None = None) -> bytes:
    """``nonce (12) || ciphertext || tag (16)`` under a fresh random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes | None = None) -> bytes:
    """The plaintext of ``seal``'s output; CryptoError if it does not authenticate."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError(f"sealed blob too short ({len(blob)} bytes)")
    try:
        return _aead(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise CryptoError("sealed blob does not authenticate (wrong key or altered)") from exc


def derive(key: bytes, info: bytes, length: int = KEY_BYTES, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 of ``key`` for one purpose (``info``)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def random_key() -> bytes:
    return os.urandom(KEY_BYTES)
