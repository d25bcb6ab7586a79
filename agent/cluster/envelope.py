"""What goes into Redis about a login: sealed envelopes and keyed claim ids, nothing else.

The cluster key ``K`` (32 random bytes per login, kept only on members) gives, by HKDF:
``K_state`` (AES-256-GCM for the state envelope), ``K_claim`` (HMAC-SHA256 for claim ids) and a
public key id ``kid``. A claim id is ``HMAC(K_claim, refresh_token)``: without ``K`` nobody can
tell which token it names, not even by hashing candidate tokens (a plain SHA-256 would allow
that, and credsync's own journal uses one, so it must never reach Redis).

An envelope is ``kid "." base64(nonce ‖ ciphertext ‖ tag)`` over the whole ``claudeAiOauth``
object plus ``gen`` (the cross-machine freshness: ``expiresAt`` comes from each refresher's own
clock), ``issued_redis_ms``, ``expires_in``, ``by`` and ``prev_claim``. Its AAD binds the login
id, ``kid``, the epoch, the state version and the fence, so an envelope copied to another
login, another epoch or another version (a replay of an older state) does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from agent import crypto
from agent.credential import Credential
from agent.errors import ClusterError

PROTOCOL = "credsync/1"
CLAIM_ID_BYTES = 16  # 128 bits: a collision needs about 2**64 tokens


class EnvelopeError(ClusterError):
    """An envelope that does not open: another key, altered, replayed or cut short."""


@dataclass(frozen=True)
class ClusterKeys:
    state: bytes = field(repr=False)
    claim: bytes = field(repr=False)
    kid: str

    @classmethod
    def from_key(cls, key: bytes) -> ClusterKeys:
        if len(key) != crypto.KEY_BYTES:
            raise ClusterError(f"a cluster key has {crypto.KEY_BYTES} bytes, not {len(key)}")
        kid = crypto.derive(key, f"{PROTOCOL} kid".encode(), 6).hex()
        return cls(state=crypto.derive(key, f"{PROTOCOL} state".encode()),
                   claim=crypto.derive(key, f"{PROTOCOL} claim".encode()), kid=kid)

    def claim_id(self, refresh_token: str) -> str:
        mac = hmac.new(self.claim, refresh_token.encode(errors="surrogatepass"), hashlib.sha256)
        return mac.hexdigest()[:CLAIM_ID_BYTES * 2]


@dataclass(frozen=True)
class Binding:
    """Where an envelope belongs; any difference and it does not open."""

    login_id: str
    kid: str
    epoch: str
    version: int
    fence: int

    def aad(self) -> bytes:
        return "|".join((PROTOCOL, self.login_id, self.kid, self.epoch, str(self.version),
                         str(self.fence))).encode()


@dataclass(frozen=True)
class Payload:
    credential: Credential
    gen: int
    issued_redis_ms: int
    expires_in: float | None
    by: str
    prev_claim: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"claudeAiOauth": self.credential.to_json_obj(), "gen": self.gen,
                "issued_redis_ms": self.issued_redis_ms, "expires_in": self.expires_in,
                "by": self.by, "prev_claim": self.prev_claim}


def seal_state(keys: ClusterKeys, binding: Binding, payload: Payload) -> str:
    if binding.kid != keys.kid:
        raise ClusterError("an envelope must be bound to the key that seals it")
    plain = json.dumps(payload.to_json(), separators=(",", ":"), allow_nan=False).encode()
    blob = crypto.seal(keys.state, plain, binding.aad())
    return f"{keys.kid}.{base64.b64encode(blob).decode('ascii')}"


def open_state(keys: ClusterKeys, binding: Binding, text: str) -> Payload:
    kid, dot, body = text.partition(".")
    if not dot or kid != keys.kid or binding.kid != keys.kid:
        raise EnvelopeError(f"the state is sealed under key {kid[:12] or '(none)'}, this "
                            f"member has {keys.kid}; run credsync cluster join again")
    try:
        blob = base64.b64decode(body.encode("ascii"), validate=True)
        plain = crypto.open_sealed(keys.state, blob, binding.aad())
    except (binascii.Error, UnicodeEncodeError, crypto.CryptoError) as exc:
        raise EnvelopeError("the cluster state does not open (altered, replayed from another "
                            "version or epoch, or another login's)") from exc
    return _payload(plain)


def _payload(plain: bytes) -> Payload:
    try:
        obj = json.loads(plain)
        oauth = obj["claudeAiOauth"]
        gen, issued = obj["gen"], obj["issued_redis_ms"]
        if not isinstance(oauth, dict) or not all(_int(v) for v in (gen, issued)):
            raise ValueError("wrong types")
        expires_in = obj.get("expires_in")
        if expires_in is not None and not isinstance(expires_in, (int, float)):
            raise ValueError("expires_in")
        return Payload(Credential(oauth), int(gen), int(issued),
                       float(expires_in) if expires_in is not None else None,
                       str(obj.get("by", "")), str(obj.get("prev_claim", "")))
    except (ValueError, KeyError, TypeError) as exc:
        raise EnvelopeError("the cluster state opened but is not a credsync state") from exc


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
