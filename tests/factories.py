"""Small builders shared by tests: credentials, credential files, config dirs."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from agent.credential import Credential


def make_cred(expires_at_ms: int, tag: str = "", **extra: Any) -> Credential:
    suffix = tag or secrets.token_hex(4)
    return Credential.build(f"sk-ant-oat01-{suffix}-{secrets.token_hex(16)}",
                            f"sk-ant-ort01-{suffix}-{secrets.token_hex(16)}",
                            expires_at_ms, scopes=["user:inference"], subscriptionType="max",
                            **extra)


def write_doc(config_dir: Path, doc: dict[str, Any]) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / ".credentials.json").write_text(json.dumps(doc))


def write_cred(config_dir: Path, cred: Credential, **other: Any) -> None:
    write_doc(config_dir, {"claudeAiOauth": cred.to_json_obj(), **other})


def read_doc(config_dir: Path) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((config_dir / ".credentials.json").read_text())
    return obj


CLEARED = {"accessToken": "", "refreshToken": "", "expiresAt": 0}
