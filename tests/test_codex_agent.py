"""Codex sessions in several homes with and without a real ``credsync run`` (issue 16): the
simulated Codex CLI refreshes within its window of exp, re-reads before refreshing, takes no
lock around the request; the simulated server revokes the family on any reuse."""

from __future__ import annotations

import pytest

from agent.sim.codex_world import CodexWorldConfig, run_codex_world

pytestmark = pytest.mark.integration


def test_with_credsync_no_reused_token_no_relogin_one_request_per_rotation() -> None:
    result = run_codex_world(CodexWorldConfig(sessions=4, homes=2, lifetimes=2.5,
                                              lifetime_s=6, agent=True))
    assert not result.errors, result.errors
    assert result.forced_relogins == 0 and result.reused == 0 and result.invalidated == 0
    assert result.revoked_families == 0 and result.invalid_grants == 0
    assert result.session_requests == 0  # every session adopted credsync's login
    assert result.rotations >= 2 and result.token_requests == result.rotations
    assert result.unauthorized == 0


def test_homes_of_two_accounts_are_each_kept_by_credsync() -> None:
    # Four homes, two accounts (home0 and home2 on one, home1 and home3 on the other): credsync
    # sorts the homes by account when it starts, and refreshes each account for its own homes.
    result = run_codex_world(CodexWorldConfig(sessions=8, homes=4, accounts=2, lifetimes=2.5,
                                              lifetime_s=6, agent=True))
    assert not result.errors, result.errors
    assert result.forced_relogins == 0 and result.reused == 0 and result.invalidated == 0
    assert result.revoked_families == 0 and result.invalid_grants == 0
    assert result.session_requests == 0  # no session of either account had to refresh
    assert result.rotations >= 4 and result.token_requests == result.rotations
    assert result.unauthorized == 0
