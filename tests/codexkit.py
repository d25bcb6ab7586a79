"""Codex logins for tests: unsigned JWTs as Codex reads them, auth.json documents as Codex
0.171.0 writes them, and the credentials credsync makes of them."""

from __future__ import annotations

import base64
import json
from typing import Any

from agent.codex.tokens import AUTH_CLAIMS, credential_from_auth
from agent.credential import Credential

BASE_S = 1_900_000_000
LIFETIME_S = 3600


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT (Codex does not check the signature)."""
    def part(obj: dict[str, Any]) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def auth_doc(n: int, account: str = "acct-1", user: str = "user-1",
             **other: Any) -> dict[str, Any]:
    """Login number ``n`` of ``account``: later ``n`` expires later."""
    iat = BASE_S + n * LIFETIME_S
    id_token = jwt({"email": "u@example.com", "exp": iat + LIFETIME_S, "iat": iat,
                    AUTH_CLAIMS: {"chatgpt_account_id": account, "chatgpt_user_id": user,
                                  "chatgpt_plan_type": "plus"}})
    access = jwt({"exp": iat + LIFETIME_S, "iat": iat, "n": n,
                  AUTH_CLAIMS: {"chatgpt_account_id": account}})
    doc: dict[str, Any] = {"OPENAI_API_KEY": None,
                           "tokens": {"id_token": id_token, "access_token": access,
                                      "refresh_token": f"rt-{account}-{n}",
                                      "account_id": account},
                           "last_refresh": f"2030-03-17T17:46:{n % 60:02d}.123456789Z"}
    doc.update(other)
    return doc


def codex_cred(n: int, account: str = "acct-1", user: str = "user-1") -> Credential:
    cred = credential_from_auth(auth_doc(n, account, user))
    assert cred is not None
    return cred


def codex_text(doc: dict[str, Any]) -> str:
    """As Codex 0.171.0 writes auth.json: serde_json's pretty form."""
    return json.dumps(doc, indent=2)
