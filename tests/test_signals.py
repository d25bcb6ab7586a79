"""``credsync run`` honours SIGTERM within 2 s whichever thread the kernel hands it to.

Right after a SIGCONT, Linux delivers a process signal to another thread than the main one (the
main thread still has a signal pending); a Python handler then waited for the main thread's next
wake-up, which with refresh off was minutes away. Found by ``credsync doctor``'s stopped-agent
test; the wake-up fd reader in ``agent.cli.main.signals_to_queue`` fixes it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.test_doctor import Machine, fresh

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stopped_s", [0.3, 1.0])
def test_sigterm_right_after_sigcont_stops_the_agent_within_2_s(tmp_path: Path,
                                                               stopped_s: float) -> None:
    m = Machine(tmp_path, None)
    m.login(fresh())
    agent = m.agent()
    pid = agent.proc.pid
    os.kill(pid, signal.SIGSTOP)
    time.sleep(stopped_s)  # how long it stays stopped is the scenario, not a synchronisation
    os.kill(pid, signal.SIGCONT)
    assert agent.stop(deadline_s=2.0) < 2.0
    assert agent.proc.returncode == 0
    assert "stopped (SIGTERM)" in agent.output()
