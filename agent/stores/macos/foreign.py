"""An item that another program made: how to tell, and what the user can do about it.

The CLI reads its item as ``/usr/bin/security``, partition ``apple-tool:``. An item created or
last written through Security.framework by another program (python-keyring's ``SecItemAdd``,
the desktop app) carries that program's partition (``teamid:``, ``cdhash:``) and trusts only
it: the CLI's ``-w`` then shows a dialog on a desktop and fails with exit 36 over SSH or from
launchd, and a fresh session says "not logged in".

Told apart without a prompt: the attributes read fine, ``-w`` fails with 36 (or runs into the
deadline, a dialog) while ``show-keychain-info`` says the keychain is unlocked; ``dump-keychain
-a`` (no ``-d``: nothing decrypted) names the partitions and trusted applications.
"""

from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass

from agent.stores.macos.identity import KeychainIdentity

CLI_PARTITION = "apple-tool:"
_HEXTEXT = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_APP = re.compile(r"^\s+\d+: (.+?)(?: \((?:OK|status -?\d+)\))?$")


@dataclass(frozen=True)
class Ownership:
    """Whom the item's access list trusts, from ``dump-keychain -a``."""

    partitions: tuple[str, ...]
    apps: tuple[str, ...]

    @property
    def cli_can_read(self) -> bool:
        return CLI_PARTITION in self.partitions

    def describe(self) -> str:
        who = ", ".join(self.apps) or "an unknown program"
        parts = ", ".join(self.partitions) or "none"
        return f"made by {who} (partitions {parts})"


def ownership(dump: str, ident: KeychainIdentity) -> Ownership | None:
    """The item's ownership in a ``dump-keychain -a`` listing, or None when not listed."""
    for block in _blocks(dump):
        if f'"svce"<blob>="{ident.service}"' in block and \
                f'"acct"<blob>="{ident.account}"' in block:
            return Ownership(tuple(_partitions(block)), tuple(_apps(block)))
    return None


def _blocks(dump: str) -> list[str]:
    blocks: list[str] = []
    for line in dump.splitlines():
        if line.startswith("keychain: ") or not blocks:
            blocks.append("")
        blocks[-1] += line + "\n"
    return blocks


def _entries(block: str) -> list[list[str]]:
    entries: list[list[str]] = []
    for line in block.splitlines():
        if re.match(r"^\s+entry \d+:\s*$", line):
            entries.append([])
        elif entries:
            entries[-1].append(line)
    return entries


def _partitions(block: str) -> list[str]:
    for entry in _entries(block):
        if not any("partition_id" in line for line in entry if "authorizations" in line):
            continue
        for line in entry:
            text = line.strip()
            if text.startswith("description: "):
                return _partition_list(text.removeprefix("description: ").strip())
    return []


def _partition_list(description: str) -> list[str]:
    # Apple prints a description that is not plain text as hex: here, a plist of partitions.
    raw = description.encode()
    if _HEXTEXT.fullmatch(description):
        raw = bytes.fromhex(description)
    try:
        obj = plistlib.loads(raw)
    except Exception:  # plain text: "apple-tool:, apple:"
        return [p.strip() for p in description.split(",") if p.strip()]
    found = obj.get("Partitions") if isinstance(obj, dict) else None
    return [str(p) for p in found] if isinstance(found, list) else []


def _apps(block: str) -> list[str]:
    apps: list[str] = []
    for entry in _entries(block):
        listing = False
        for line in entry:
            if re.match(r"^\s+applications \(\d+\):", line):
                listing = True
                continue
            match = _APP.match(line) if listing else None
            if match:
                apps.append(match.group(1))
            elif listing and not line.strip().startswith("requirement"):
                listing = False
    return list(dict.fromkeys(apps))


def fix_text(ident: KeychainIdentity, found: Ownership | None) -> str:
    """What the user can run: one line, each way out named."""
    who = found.describe() if found is not None else "made by another program"
    acct, svc = ident.account, ident.service
    return (f'Claude Code cannot read its Keychain item "{svc}" without a prompt: it was {who}. '
            f"Fix, one of: run `security set-generic-password-partition-list -S "
            f'apple-tool:,apple: -a {acct} -s "{svc}"` (asks for your login password); or run '
            f'`security find-generic-password -a {acct} -s "{svc}" -w` once in Terminal on the '
            f"Mac's desktop and click Always Allow; or run `security delete-generic-password "
            f'-a {acct} -s "{svc}"` and then /login in Claude Code')
