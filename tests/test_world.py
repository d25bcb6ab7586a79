"""The 12-session world, short: with the real agent nobody is logged out; without it, they are.

Everything is real but the pace: ``credsync run`` as a process, real files and lock dirs, real
HTTP to the simulated token server, sessions checking their access token with that server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import RefreshSection
from agent.refresh.coordinator import Schedule
from agent.sim.server import RequestRecord
from agent.sim.world import (
    World,
    WorldConfig,
    format_results,
    min_lead,
    private_env,
    render_table,
)
from tests.agentproc import REPO
from tests.factories import make_cred

# -- with the agent ----------------------------------------------------------------------------

@pytest.mark.integration
def test_with_the_agent_twelve_sessions_in_four_dirs_keep_their_login(tmp_path: Path) -> None:
    result = World(WorldConfig(sessions=12, dirs=4, lifetimes=3, lifetime_s=2.5, agent=True),
                   tmp_path).run()
    print(format_results([result]))
    assert result.errors == ()
    assert (result.forced_relogins, result.invalid_grants, result.revoked_families) == (0, 0, 0)
    # The agent refreshed every lifetime, before any session's window opened...
    assert result.rotations >= 3
    assert result.token_requests == result.rotations  # ...with one request per rotation
    assert result.session_requests == 0 and result.unauthorized == 0
    assert result.min_lead_s is not None and result.min_lead_s > 0
    assert result.logins == 1  # nobody had to log in again


# -- without the agent ---------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize(("sessions", "dirs", "cas", "mixed"),
                         [(12, 4, False, False), (6, 3, True, True)],
                         ids=["older-cli-12-in-4", "mixed-cli-6-in-3"])
def test_without_the_agent_sessions_in_several_dirs_lose_the_login(
        tmp_path: Path, sessions: int, dirs: int, cas: bool, mixed: bool) -> None:
    # Not a matter of timing: each dir holds its own copy of the login and only its own
    # sessions write it, so every dir redeems the SAME refresh token once its window opens.
    # The server rotates it for the first and refuses it (revoking the family) for every
    # other; nothing newer is on their disks, so each of those dirs clears its login.
    result = World(WorldConfig(sessions=sessions, dirs=dirs, cas=cas, mixed=mixed,
                               lifetimes=1.5, lifetime_s=2.0), tmp_path).run()
    print(format_results([result]))
    assert result.errors == ()
    assert result.invalid_grants >= dirs - 1
    assert result.forced_relogins >= dirs - 1
    assert result.revoked_families >= 1
    assert result.logins >= dirs  # the user logged in again in each losing dir
    assert result.requests_per_rotation is not None and result.requests_per_rotation > 1


# -- the demo, as a user runs it ---------------------------------------------------------------

ROW = re.compile(r"^(with|without) credsync, older CLI\s+(\d+)\s+(\d+)\s+([\d.]+|-)\s*$")


@pytest.mark.integration
def test_demo_runs_end_to_end_and_prints_both_rows(tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {**private_env(home), "TMPDIR": str(tmp)}
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--sessions", "12", "--dirs", "4",
         "--lifetimes", "2", "--lifetime-s", "2", "--old-cli"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == ""
    rows = {m[1]: m.groups()[1:] for line in out.stdout.splitlines()
            if (m := ROW.match(line))}
    assert set(rows) == {"with", "without"}, out.stdout
    relogins, invalid, per_rotation = rows["without"]
    assert int(relogins) >= 1 and int(invalid) >= 1 and float(per_rotation) > 1
    assert rows["with"] == ("0", "0", "1.00")
    assert list(tmp.iterdir()) == []  # the demo's temp dir is gone
    assert not (home / ".claude").exists()  # it never touched the user's config dir


# -- the parts, fast ---------------------------------------------------------------------------

def test_the_agent_is_due_before_the_sessions_window_at_any_scale() -> None:
    for lifetime in (1.0, 3.0, 8 * 3600.0):
        cfg = WorldConfig(lifetime_s=lifetime)
        refresh = cfg.refresh_settings("http://127.0.0.1:1/v1/oauth/token")
        latest_due = (cfg.at_fraction + cfg.jitter) * lifetime
        window_opens = lifetime - cfg.window_s
        assert latest_due < window_opens - cfg.margin_fraction * lifetime
        assert (refresh["at_fraction"], refresh["jitter"]) == (cfg.at_fraction, cfg.jitter)
        assert refresh["client_window_s"] == cfg.window_s
        assert refresh["margin_s"] == cfg.margin_fraction * lifetime
        assert refresh["nominal_lifetime_s"] == lifetime


@pytest.mark.parametrize("lifetime", [3.0, 40.0, 8 * 3600.0])
def test_after_its_own_refresh_the_agent_is_due_again_before_expiry(lifetime: float) -> None:
    # The finding of this world: a fixed 10 s floor after the agent's own refresh let a token
    # that lives 3 s expire before the next refresh, and the sessions raced for it.
    section = RefreshSection(at_fraction=0.55, jitter=0, client_window_s=0.15 * lifetime,
                             margin_s=0.1 * lifetime, nominal_lifetime_s=lifetime)
    issued = 1_800_000_000.0
    cred = make_cred(int((issued + lifetime) * 1000))
    due = Schedule(section, "salt").deadline(cred, lifetime, last_refresh_at=issued)
    assert due == pytest.approx(issued + 0.55 * lifetime)


def test_a_misconfigured_schedule_still_never_loops() -> None:
    # Due before it was even issued (window + margin longer than the lifetime): the floor holds.
    section = RefreshSection(client_window_s=300, margin_s=60, nominal_lifetime_s=120)
    cred = make_cred(int((1_800_000_000.0 + 120) * 1000))
    due = Schedule(section, "salt").deadline(cred, 120, last_refresh_at=1_800_000_000.0)
    assert due == 1_800_000_000.0 + 10.0


def test_a_config_that_lets_sessions_go_first_is_refused() -> None:
    with pytest.raises(ValueError, match="before the sessions' window"):
        WorldConfig(at_fraction=0.8, window_fraction=0.15, margin_fraction=0.1)


def test_min_lead_is_the_worst_margin_before_the_window() -> None:
    records = [RequestRecord(t, "claude", "x", "rotated", 200) for t in (1.0, 2.5)]
    records.insert(1, RequestRecord(1.2, "claude", "y", "invalid_grant", 400))
    # login at 0, lifetime 3, window 1: windows open at 2 and 3; rotations at 1 and 2.5
    assert min_lead(records, 0.0, 3.0, 1.0) == pytest.approx(0.5)
    assert min_lead([], 0.0, 3.0, 1.0) is None


def test_private_env_keeps_credsync_away_from_the_users_setup(tmp_path: Path) -> None:
    env = private_env(tmp_path, {"CREDSYNC_CONFIG": "/x", "credsync_refresh__enabled": "0",
                                 "CLAUDE_CONFIG_DIR": "/y", "PATH": "/bin",
                                 "PYTHONPATH": "/extra"})
    assert env["HOME"] == str(tmp_path) and env["PATH"] == "/bin"
    assert not any(k.upper().startswith("CREDSYNC_") or k == "CLAUDE_CONFIG_DIR" for k in env)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/extra"]


def test_render_table_aligns_columns() -> None:
    text = render_table(["run", "n", "ratio"], [["a", 1, 1.0], ["longer", 12, None]])
    assert text.splitlines() == ["run      n  ratio",
                                 "------  --  -----",
                                 "a        1   1.00",
                                 "longer  12      -"]
