"""Per-session cache files (``[[sinks]]``): the access token in the form a session reads.

Formats: ``claude`` (the CLI's document, merged into what is at the path), ``access-token`` (the
token and a newline), ``env`` (``NAME=value``), ``json`` (``{"access_token", "expires_at"}``).

A sink is refused (StoreError on write, an ``error`` reading) when another user could read or
redirect it: see ``agent.fsutil.unsafe_write_reason`` for the rule. The token formats take only a
bearer token (RFC 6750 ``b64token``): anything else could break the line or, in a sourced env
file, run as a command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from agent.credential import (
    MAX_DOCUMENT_BYTES,
    Credential,
    Reading,
    ReadState,
    merged_document,
    ms_or_none,
    parse_document,
    render_document,
)
from agent.errors import StoreError
from agent.fsutil import (
    Signature,
    atomic_write,
    ensure_private_dir,
    read_bytes,
    unsafe_write_reason,
    write_target,
)
from agent.stores.base import Role, Store
from agent.stores.claude_file import require_writable

BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 s.2.1 b64token


class SinkStore(Store):
    kind = "sink"
    role = Role.OUTPUT  # what a session reads: never a source of truth, never judged

    def __init__(self, path: Path, format: str, env_var: str = "CLAUDE_CODE_OAUTH_TOKEN") -> None:
        self.path = path
        self.format = format
        self.env_var = env_var
        self.name = f"sink:{path}"
        self.location = f"{path} ({format})"
        self.written: Signature | None = None

    @property
    def watch_path(self) -> Path:
        return self.path

    def _existing(self) -> bytes | None:
        return read_bytes(self.path, MAX_DOCUMENT_BYTES)

    def _refusal(self) -> str | None:
        reason = unsafe_write_reason(self.path)
        return f"refusing to write {self.path}: {reason}" if reason else None

    def render(self, cred: Credential, existing: bytes | None) -> bytes:
        if self.format in ("access-token", "env") and \
                not BEARER_TOKEN.fullmatch(cred.access_token):
            raise StoreError(f"refusing to write {self.path}: access token {cred.fingerprint} "
                             f"is not a bearer token (RFC 6750) and would break the "
                             f"{self.format} format")
        if self.format == "access-token":
            return cred.access_token.encode() + b"\n"
        if self.format == "env":
            return f"{self.env_var}={cred.access_token}\n".encode()
        if self.format == "json":
            obj: dict[str, Any] = {"access_token": cred.access_token,
                                   "expires_at": cred.expires_at_ms}
            return json.dumps(obj).encode() + b"\n"
        doc = parse_document(existing)[1] if existing else None
        return render_document(merged_document(doc, cred))

    def read(self) -> Reading:
        refusal = self._refusal()
        if refusal is not None:
            return Reading(ReadState.ERROR, detail=refusal)
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
            parsed = _parse_json_sink(text)
            if isinstance(parsed, str):
                return Reading(ReadState.INVALID, detail=parsed)
            token, expires = parsed
        if not token:
            return Reading(ReadState.CLEARED, detail="empty")
        if not BEARER_TOKEN.fullmatch(token):
            return Reading(ReadState.INVALID, detail="not a bearer token (RFC 6750)")
        # A sink holds only the access token: the credential read back is partial.
        return Reading(ReadState.VALID, Credential.build(token, "", expires))

    def write(self, cred: Credential, supersedes: Credential | None = None) -> bool:
        require_writable(cred)
        ensure_private_dir(self.path.parent)
        refusal = self._refusal()
        if refusal is not None:
            raise StoreError(refusal)
        existing = self._existing()
        data = self.render(cred, existing)
        if existing == data:
            return False
        self.written = atomic_write(write_target(self.path), data)
        return True


def _parse_json_sink(text: str) -> tuple[str, int] | str:
    """(token, expires_at) from the json format, or what is wrong with it."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return "not the json sink format (not JSON)"
    if not isinstance(obj, dict):
        return f"not the json sink format (a {type(obj).__name__}, expected an object)"
    token, expires = obj.get("access_token"), obj.get("expires_at")
    if not isinstance(token, str):
        return f"access_token is {type(token).__name__}, expected a string"
    expires_ms = ms_or_none(expires)
    if expires_ms is None:
        return f"expires_at is {type(expires).__name__} or out of range, expected milliseconds"
    return token, expires_ms
