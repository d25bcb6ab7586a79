"""Codex homes sorted by the account whose login they hold.

A login is never written across accounts (Codex's guarded reload fails for good on another
account id), so homes of two accounts cannot share one winner: each account is a login of its
own, kept fresh and in step over its own homes, with its own ledger, schedule and alerts. The
homes are sorted when credsync starts (and when status, doctor or token run); a home with no
login yet goes with the first account, as every home did before there was a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.codex.tokens import same_identity
from agent.credential import Credential

__all__ = ["group_homes"]


def group_homes(held: Sequence[tuple[Path, Credential | None]]
                ) -> list[tuple[list[Path], Credential | None]]:
    """The homes (each with the login it holds, if any) in groups of one account each, in the
    order of their first home, each with a login of its account (None: no home has one); by
    the very rule that refuses a write across accounts."""
    groups: list[tuple[Credential, list[Path]]] = []
    loose: list[Path] = []
    for home, cred in held:
        if cred is None:
            loose.append(home)
            continue
        group = next((homes for first, homes in groups if same_identity(first, cred)), None)
        if group is None:
            groups.append((cred, [home]))
        else:
            group.append(home)
    if not groups:
        return [([home for home, _ in held], None)] if held else []
    order = {home: i for i, (home, _) in enumerate(held)}
    first = sorted([*groups[0][1], *loose], key=order.__getitem__)
    return [(first, groups[0][0]), *((homes, cred) for cred, homes in groups[1:])]
