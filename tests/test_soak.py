"""The soak, shortened for CI: two minutes of the simulated world and the real agent.

Twelve simulated Claude Code sessions (real processes, a third of them 2.1.37-style) in four
config dirs, a 30-second token lifetime, ``credsync run`` as a real process: no forced re-login,
no session ever needs to refresh, the agent's memory and open files stay flat. The 30-minute run
is ``python -m agent.bench.soak --minutes 30`` (figures in the README's fault table).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.bench.soak import RSS_GROWTH_LIMIT_KB, SoakConfig, SoakReport, proc_sample, run_soak

CI_MINUTES = float(os.environ.get("CREDSYNC_SOAK_MINUTES", "2"))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(int(CI_MINUTES * 60 + 120))
def test_soak_twelve_sessions_and_the_agent(tmp_path: Path) -> None:
    report = run_soak(SoakConfig(minutes=CI_MINUTES, workdir=tmp_path / "soak"))
    print("\n" + report.render())
    assert report.forced_relogins == 0
    assert report.invalid_grants == 0 and report.revoked_families == 0
    # The agent refreshed on time, every time: no session ever reached its own refresh window.
    assert report.rotations >= CI_MINUTES * 60 / 15 - 2
    assert report.session_requests == 0 and report.unauthorized == 0
    assert report.agent_alive and report.agent_exit == 0 and report.stores_consistent
    assert report.rss_growth_kb < RSS_GROWTH_LIMIT_KB
    assert report.fds_end <= report.fds_start
    assert len(report.samples) >= CI_MINUTES * 60 * 0.8  # sampled all along, once a second
    assert report.ok, report.problems


def test_proc_sample_reads_memory_and_fds_of_a_live_process() -> None:
    sample = proc_sample(os.getpid(), 0.0)
    assert sample is not None and sample.rss_kb > 1000 and sample.fds >= 3
    assert proc_sample(2**22 + 1, 0.0) is None  # above any pid_max: no such process


def test_report_names_every_missed_goal() -> None:
    report = SoakReport(minutes=1, sessions=12, dirs=4, lifetime_s=30, rotations=4,
                        agent_alive=True, agent_exit=0, stores_consistent=True,
                        rss_start_kb=50_000, rss_end_kb=50_000 + RSS_GROWTH_LIMIT_KB,
                        fds_start=8, fds_end=9, forced_relogins=1)
    report.judge()
    assert not report.ok
    assert len(report.problems) == 3, report.problems
    assert "FAILED" in report.render() and "forced re-login" in report.render()
    healthy = SoakReport(minutes=1, sessions=12, dirs=4, lifetime_s=30, rotations=4,
                         agent_alive=True, agent_exit=0, stores_consistent=True,
                         rss_start_kb=50_000, rss_end_kb=50_100, fds_start=8, fds_end=8)
    healthy.judge()
    assert healthy.ok and "result: OK" in healthy.render()
