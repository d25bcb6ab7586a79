"""One-time join codes: ``CS1-`` + base32(login id 8 B ‖ secret 16 B ‖ check 2 B).

Redis holds only ``AES-GCM(HKDF(secret), K)`` under ``cs:{L}:invite:<id>``, for 10 minutes, and
``GETDEL`` hands it to exactly one joiner. The id is derived from the secret (unlike the design
note's code, which spent 5 bytes on a separate id): the key name reveals nothing of the secret,
and the code carries the login id instead, so that a joiner needs no listing of Redis. The two
check bytes tell a mistyped code from a used or expired one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass, field

from agent import crypto
from agent.cluster.envelope import PROTOCOL
from agent.errors import ClusterError, ConfigError

PREFIX = "CS1-"
LOGIN_ID_BYTES = 8
SECRET_BYTES = 16
CHECK_BYTES = 2
INVITE_TTL_S = 600


def new_login_id() -> str:
    return secrets.token_hex(LOGIN_ID_BYTES)


@dataclass(frozen=True)
class InviteCode:
    login_id: str
    secret: bytes = field(repr=False)

    @classmethod
    def new(cls, login_id: str) -> InviteCode:
        return cls(login_id, secrets.token_bytes(SECRET_BYTES))

    @property
    def text(self) -> str:
        body = bytes.fromhex(self.login_id) + self.secret
        check = hashlib.sha256(body).digest()[:CHECK_BYTES]
        return PREFIX + base64.b32encode(body + check).decode("ascii").rstrip("=")

    @property
    def invite_id(self) -> str:
        return crypto.derive(self.secret, f"{PROTOCOL} invite id".encode(), 8).hex()

    @property
    def key(self) -> bytes:
        return crypto.derive(self.secret, f"{PROTOCOL} invite key".encode())

    def aad(self) -> bytes:
        return f"{PROTOCOL}|invite|{self.login_id}|{self.invite_id}".encode()


def parse_code(text: str, field: str = "CODE") -> InviteCode:
    """The code as typed (any case; spaces and dashes ignored after the prefix)."""
    fix = "copy the whole last line that credsync cluster invite printed (CS1-...)"
    cleaned = "".join(text.split()).upper()
    if not cleaned.startswith(PREFIX):
        raise ConfigError([f"{field}: not a credsync join code (it starts with {PREFIX}); {fix}"])
    body = cleaned[len(PREFIX):].replace("-", "")
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ConfigError([f"{field}: not a valid join code (bad characters); {fix}"]) from exc
    size = LOGIN_ID_BYTES + SECRET_BYTES
    data, check = raw[:size], raw[size:]
    if len(raw) != size + CHECK_BYTES or hashlib.sha256(data).digest()[:CHECK_BYTES] != check:
        raise ConfigError([f"{field}: the join code is mistyped or cut short; {fix}"])
    return InviteCode(data[:LOGIN_ID_BYTES].hex(), data[LOGIN_ID_BYTES:])


def seal_invite(code: InviteCode, cluster_key: bytes, by: str) -> bytes:
    plain = json.dumps({"k": base64.b64encode(cluster_key).decode(), "by": by}).encode()
    return crypto.seal(code.key, plain, code.aad())


def open_invite(code: InviteCode, blob: bytes) -> tuple[bytes, str]:
    """The cluster key and the inviting member."""
    try:
        obj = json.loads(crypto.open_sealed(code.key, blob, code.aad()))
        key = base64.b64decode(obj["k"], validate=True)
    except (crypto.CryptoError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ClusterError("the invitation stored in Redis does not open with this code "
                           "(altered?); ask for a new one with credsync cluster invite") from exc
    if len(key) != crypto.KEY_BYTES:
        raise ClusterError("the invitation holds no valid cluster key; ask for a new one")
    return key, str(obj.get("by", ""))
