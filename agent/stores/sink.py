"""Per-session cache files (``[[sinks]]``): the access token in the form a session reads.

Formats: ``claude`` (the CLI's document, merged into what is at the path), ``access-token`` (the
token and a newline), ``env`` (``NAME=value``), ``json`` (``{"access_token", "expires_at"}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.credential import (
    MAX_DOCUMENT_BYTES,
    Credential,
    Reading,
    ReadState,
    merged_document,
    parse_document,
)
from agent.errors import StoreError
from agent.fsutil import atomic_write, ensure_private_dir, read_bytes, write_target
from agent.stores.claude_file import require_writable


class SinkStore:
    kind = "sink"
    is_source = False  # sinks are outputs: what a session reads, never a source of truth

    def __init__(self, path: Path, format: str, env_var: str = "CLAUDE_CODE_OAUTH_TOKEN") -> None:
        self.path = path
        self.format = format
        self.env_var = env_var
        self.name = f"sink:{path}"
        self.location = f"{path} ({format})"

    @property
    def watch_path(self) -> Path:
        return self.path

    def _existing(self) -> bytes | None:
        return read_bytes(self.path, MAX_DOCUMENT_BYTES)

    def render(self, cred: Credential, existing: bytes | None) -> bytes:
        if self.format == "access-token":
            return cred.access_token.encode() + b"\n"
        if self.format == "env":
            return f"{self.env_var}={cred.access_token}\n".encode()
        if self.format == "json":
            obj: dict[str, Any] = {"access_token": cred.access_token,
                                   "expires_at": cred.expires_at_ms}
            return json.dumps(obj).encode() + b"\n"
        doc = parse_document(existing)[1] if existing else None
        return json.dumps(merged_document(doc, cred), indent=2).encode() + b"\n"

    def read(self) -> Reading:
        try:
            raw = self._existing()
        except StoreError as exc:
            return Reading(ReadState.ERROR, detail=str(exc))
        if raw is None:
            return Reading(ReadState.MISSING, detail="not written yet")
        return self._parse(raw)

    def _parse(self, raw: bytes) -> Reading:
        if self.format == "claude":
            return parse_document(raw)[0]
        text = raw.decode(errors="replace").strip()
        token, expires = "", 1
        if self.format == "access-token":
            token = text
        elif self.format == "env":
            name, _, token = text.partition("=")
            if name != self.env_var:
                return Reading(ReadState.INVALID, detail=f"expected {self.env_var}=...")
        else:
            try:
                obj = json.loads(text)
                token, expires = str(obj["access_token"]), int(obj["expires_at"])
            except (ValueError, KeyError, TypeError):
                return Reading(ReadState.INVALID, detail="not the json sink format")
        if not token:
            return Reading(ReadState.CLEARED, detail="empty")
        # A sink holds only the access token: the credential read back is partial.
        return Reading(ReadState.VALID, Credential.build(token, "", expires))

    def write(self, cred: Credential) -> bool:
        require_writable(cred)
        ensure_private_dir(self.path.parent)
        existing = self._existing()
        data = self.render(cred, existing)
        if existing == data:
            return False
        atomic_write(write_target(self.path), data)
        return True
