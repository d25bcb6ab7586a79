"""Unsigned-style JWTs for the simulation: Codex reads its tokens' claims without checking the
signature, so a dummy signature segment is all a test token needs.

``access_token(exp=..., iat=...)`` is shaped like an OpenAI access token (``exp``, ``iat``, a
``jti`` so every token differs, the ``https://api.openai.com/auth`` claims); ``id_token(...)``
like its id token (``email`` and ``chatgpt_account_id``, ``chatgpt_user_id``,
``chatgpt_plan_type`` under ``https://api.openai.com/auth``).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from typing import Any, Literal

AUTH_CLAIMS = "https://api.openai.com/auth"
PROFILE_CLAIMS = "https://api.openai.com/profile"
ISSUER = "https://auth.openai.com"
DUMMY_SIGNATURE = "c2lt"  # base64url of "sim": three segments, nothing to verify
Alg = Literal["RS256", "none"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode(claims: Mapping[str, Any], alg: Alg = "RS256") -> str:
    """A JWT of ``claims``: a real header and payload, a dummy signature."""
    header = {"alg": alg, "typ": "JWT"}
    parts = [b64url(json.dumps(part, separators=(",", ":")).encode())
             for part in (header, dict(claims))]
    return ".".join([*parts, DUMMY_SIGNATURE])


def auth_claims(account_id: str, user_id: str, plan_type: str) -> dict[str, str]:
    return {"chatgpt_account_id": account_id, "chatgpt_user_id": user_id,
            "chatgpt_plan_type": plan_type, "user_id": user_id}


def access_token(*, exp: int, iat: int, account_id: str = "sim-account",
                 user_id: str = "sim-user", plan_type: str = "plus",
                 client_id: str = "app_sim", alg: Alg = "RS256") -> str:
    claims = {"iss": ISSUER, "aud": ["https://api.openai.com/v1"], "client_id": client_id,
              "sub": user_id, "iat": iat, "nbf": iat, "exp": exp,
              "jti": secrets.token_hex(12),
              AUTH_CLAIMS: auth_claims(account_id, user_id, plan_type),
              "scp": ["openid", "profile", "email", "offline_access"]}
    return encode(claims, alg)


def id_token(*, iat: int, exp: int | None = None, account_id: str = "sim-account",
             user_id: str = "sim-user", email: str = "sim@example.com",
             plan_type: str = "plus", client_id: str = "app_sim", alg: Alg = "RS256") -> str:
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": [client_id], "sub": user_id, "iat": iat,
        "exp": exp if exp is not None else iat + 3600, "email": email,
        "email_verified": True, AUTH_CLAIMS: auth_claims(account_id, user_id, plan_type),
        PROFILE_CLAIMS: {"email": email, "email_verified": True}}
    return encode(claims, alg)
