"""Codex homes sorted by account (agent.codex.groups): homes of two accounts never share a
winner, by the rule that refuses a write across accounts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.clock import FakeClock
from agent.codex.groups import group_homes
from agent.config import AgentSection, ClaudeSection, CodexSection, Settings
from agent.credential import Credential, ReadState
from agent.loop.runtime import codex_accounts, codex_coordinator, codex_ledger_of
from tests.codexkit import BASE_S, auth_doc, codex_cred

A, B, C, D = (Path(f"/h/{n}") for n in "abcd")


def homes_of(held: list[tuple[Path, Credential | None]]) -> list[list[Path]]:
    return [homes for homes, _ in group_homes(held)]


def test_one_account_is_one_group_in_the_homes_order() -> None:
    assert group_homes([(A, codex_cred(1)), (B, codex_cred(2)), (C, None)]) == \
        [([A, B, C], codex_cred(1))]


def test_two_accounts_are_two_groups_and_a_home_without_login_goes_with_the_first() -> None:
    held = [(A, None), (B, codex_cred(1, account="x")), (C, codex_cred(2, account="y")),
            (D, codex_cred(3, account="x"))]
    assert group_homes(held) == [([A, B, D], held[1][1]), ([C], held[2][1])]


def test_another_user_of_the_same_account_is_another_group() -> None:
    held = [(A, codex_cred(1, user="u1")), (B, codex_cred(1, user="u2"))]
    assert homes_of(held) == [[A], [B]]


def test_no_login_anywhere_and_no_home() -> None:
    assert group_homes([(A, None), (B, None)]) == [([A, B], None)]
    assert group_homes([]) == []


# --- the accounts of a configuration, and a home that changes account while credsync runs ----

def settings_for(tmp: Path, homes: list[Path]) -> Settings:
    return Settings(agent=AgentSection(state_dir=tmp / "state"),
                    claude=ClaudeSection(config_dirs=[]),
                    codex=CodexSection(homes=homes, keychain=False))


def seed_home(home: Path, doc: dict[str, Any]) -> None:
    home.mkdir(exist_ok=True)
    (home / "auth.json").write_text(json.dumps(doc))
    os.chmod(home / "auth.json", 0o600)


def test_the_accounts_of_a_configuration_and_their_scopes(tmp_path: Path) -> None:
    h1, h2, h3 = (tmp_path / f"h{i}" for i in (1, 2, 3))
    seed_home(h1, auth_doc(1))
    seed_home(h2, auth_doc(2, account="acct-2"))
    seed_home(h3, auth_doc(3))
    settings = settings_for(tmp_path, [h1, h2, h3])
    accounts = codex_accounts(settings)
    assert [a.settings.codex.homes for a in accounts] == [[h1, h3], [h2]]
    assert [a.identity for a in accounts] == [codex_cred(1), codex_cred(2, account="acct-2")]
    assert len({codex_ledger_of(a.settings).path for a in accounts}) == 2  # a scope each
    seed_home(h2, auth_doc(4))  # now all one account: one scope, the whole list, no pin
    [one] = codex_accounts(settings)
    assert one.settings is settings and one.identity is None


def test_a_home_that_changed_account_is_no_candidate_and_is_not_written(tmp_path: Path) -> None:
    h1, h2, h3 = (tmp_path / f"h{i}" for i in (1, 2, 3))
    seed_home(h1, auth_doc(1))
    seed_home(h2, auth_doc(2, account="acct-2"))
    seed_home(h3, auth_doc(1))
    first, _ = codex_accounts(settings_for(tmp_path, [h1, h2, h3]))
    seed_home(h3, auth_doc(9, account="acct-3"))  # `codex login` to a third account, later
    before = (h3 / "auth.json").read_bytes()
    clock = FakeClock(BASE_S)  # the logins' own time: none of them is implausibly long
    with codex_coordinator(first.settings, clock, identity=first.identity) as coord:
        readings = coord.writer.read_all()
        assert readings[f"codex:{h3}"].state is ReadState.ERROR
        assert "restart credsync" in readings[f"codex:{h3}"].detail
        assert coord.verdict().winner == codex_cred(1)  # not the fresher login of acct-3
        coord.writer.round()
    assert (h3 / "auth.json").read_bytes() == before
