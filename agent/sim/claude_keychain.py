"""Claude Code's side of its macOS Keychain item, for tests: the CLI's read, classified as the
CLI classifies it (``../shared/notes/macos-keychain.md``, "Reading"), its merge of the overflow
item, and its write (one ``security -i`` line). It runs ``security`` the way the CLI does, so
against the ``security`` double it answers "would a real session still see its login?".

Also ``seal_overflow``: builds a main document and an overflow item the way the CLI's sealing
leaves them (sections moved, pointer with or without the login binding), so that tests can
check that credsync keeps every sealed section reachable.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.crypto import random_key, seal
from agent.stores.macos import overflow
from agent.stores.macos.identity import KeychainIdentity
from agent.stores.macos.security import (
    INTERACTION_NOT_ALLOWED,
    NOT_FOUND,
    SecurityTool,
    add_line,
)

GROWS = ("mcpOAuth", "mcpOAuthClientConfig", "pluginSecrets", "coworkRemoteDevice")
LOGIN_BOUND = ("claudeAiOauth", "designOauth", "chatHistoryOauth", "cloudSessionsOauth",
               "enterpriseGateway")


@dataclass(frozen=True)
class CliRead:
    said: str  # "item", "unparsable", "empty", "no such item", "locked", "nothing"
    data: dict[str, Any] | None = None
    partial: bool = False  # the overflow was gone or did not open

    @property
    def login(self) -> dict[str, Any] | None:
        oauth = self.data.get("claudeAiOauth") if self.data else None
        return oauth if isinstance(oauth, dict) and oauth.get("accessToken") else None


def classify(code: int | None, out: str) -> CliRead:
    if code == 0:
        text = out.strip()
        if not text:
            return CliRead("empty")
        try:
            data = json.loads(text)
        except ValueError:
            return CliRead("unparsable")
        return CliRead("item", data) if isinstance(data, dict) else CliRead("unparsable")
    if code == NOT_FOUND:
        return CliRead("no such item")
    if code == INTERACTION_NOT_ALLOWED:
        return CliRead("locked")
    return CliRead("nothing")


def cli_read(tool: SecurityTool, ident: KeychainIdentity) -> CliRead:
    """What a Claude Code session reads from its item (then the overflow, if pointed to)."""
    answer = tool.secret(ident.service, ident.account)
    first = classify(answer.code, answer.out)
    if first.said != "item" or first.data is None:
        return first
    ptr = overflow.pointer(first.data)
    if ptr is None:
        return first
    more = tool.secret(ident.overflow_service(str(ptr["slot"])), ident.account)
    if more.timed_out or more.code == INTERACTION_NOT_ALLOWED:
        return CliRead("nothing")
    sections = overflow.open_overflow(ptr, more.out) if more.ok else None
    if sections is None:
        return CliRead("item", _main(first.data), partial=True)
    return CliRead("item", merge(first.data, sections))


def _main(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != overflow.POINTER_KEY}


def merge(doc: Mapping[str, Any], sections: Mapping[str, Any]) -> dict[str, Any]:
    """The CLI's merge: "grows" entries always (a main ``mcpOAuth`` entry wins only with an
    ``accessToken``); login-bound sections and others only while the binding holds."""
    bound = overflow.binding_holds(doc)
    merged = _main(doc)
    if merged.get("organizationUuid") == "":
        del merged["organizationUuid"]
    for name, section in sections.items():
        if name in GROWS and isinstance(section, dict):
            entries = dict(section)
            for key, value in (merged.get(name) or {}).items():
                keep_main = name != "mcpOAuth" or (isinstance(value, dict) and
                                                   value.get("accessToken")) or key not in entries
                if keep_main:
                    entries[key] = value
            merged[name] = entries
        elif bound and name not in merged:
            merged[name] = section
    return merged


def cli_login(tool: SecurityTool, ident: KeychainIdentity) -> dict[str, Any] | None:
    """The login a fresh session would use: the item's, or None (then it would say "not
    logged in", unless the item is absent and the file holds one)."""
    return cli_read(tool, ident).login


def cli_write(tool: SecurityTool, ident: KeychainIdentity, doc: Mapping[str, Any]) -> int | None:
    """The CLI's own write of a whole document (a login, a refresh)."""
    from agent.stores.macos.store import cli_text

    text = cli_text(dict(doc))
    return tool.add(add_line(ident.account, ident.service, text.encode("ascii").hex())).code


def _hash16(value: Any) -> str:
    return hashlib.sha256(overflow.js_stringify(value).encode()).hexdigest()[:16]


def seal_overflow(doc: Mapping[str, Any], move: Iterable[str], slot: str = "a",
                  ) -> tuple[dict[str, Any], str]:
    """``doc`` with the sections named in ``move`` sealed away, as the CLI leaves it: the main
    document (with its pointer) and the overflow item's secret (base64 of IV, ciphertext,
    tag). Moving a login-bound section binds the pointer to the login, as the CLI does."""
    key = random_key()
    main = dict(doc)
    sections = {name: main.pop(name) for name in move}
    ptr: dict[str, Any] = {"slot": slot, "key": base64.b64encode(key).decode()}
    if any(name not in GROWS for name in sections):
        main.setdefault("organizationUuid", doc.get("organizationUuid", ""))
        ptr.update(login=overflow.login_hash(main),
                   organizationUuid=main["organizationUuid"], member=_hash16([]))
    main[overflow.POINTER_KEY] = ptr
    text = overflow.js_stringify(dict(sorted(sections.items())))
    return main, base64.b64encode(seal(key, text.encode())).decode()
