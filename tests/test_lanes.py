"""Several providers on one loop (agent.loop.lanes): every event reaches every lane, the
earliest deadline wins the queue's timeout, a stop stops them all, and a lane's waiting
refresh still hands events to the others."""

from __future__ import annotations

import queue
from pathlib import Path

from agent.clock import FakeClock
from agent.ledger import Ledger
from agent.loop.agent import Agent, Stop
from agent.loop.lanes import Lanes
from agent.loop.watcher import FileChanged
from agent.stores.claude_file import ClaudeFileStore
from tests.factories import make_cred, write_cred

NOW_MS = 1_800_000_000_000


def two_lanes(tmp: Path) -> tuple[Lanes, list[Agent], list[list[Path]], FakeClock]:
    clock = FakeClock(NOW_MS / 1000)
    events: queue.Queue[object] = queue.Queue()
    agents, dirs = [], []
    for name in ("claude", "codex"):
        ds = [tmp / name / f"d{i}" for i in range(2)]
        for d in ds:
            d.mkdir(parents=True)
        agents.append(Agent([ClaudeFileStore(d) for d in ds], Ledger(tmp / name / "state", ds),
                            clock, events))
        dirs.append(ds)
    return Lanes(agents, events), agents, dirs, clock


def test_an_event_reaches_every_lane_and_each_keeps_its_own_login(tmp_path: Path) -> None:
    lanes, agents, dirs, _ = two_lanes(tmp_path)
    a, b = make_cred(NOW_MS + 9000), make_cred(NOW_MS + 8000)
    write_cred(dirs[0][0], a)
    write_cred(dirs[1][0], b)
    lanes.events.put(FileChanged(dirs[0][0] / ".credentials.json", complete=True))
    lanes.step(0)
    # each lane copied its own login to its own other dir, and only there
    assert ClaudeFileStore(dirs[0][1]).read().valid.same_tokens(a)  # type: ignore[union-attr]
    assert ClaudeFileStore(dirs[1][1]).read().valid.same_tokens(b)  # type: ignore[union-attr]
    assert all(agent.rounds == 1 for agent in agents)


def test_a_stop_stops_every_lane_and_a_waiting_lane_passes_events_on(tmp_path: Path) -> None:
    lanes, agents, _, _ = two_lanes(tmp_path)
    lanes.events.put(Stop("test"))
    assert agents[0].pause(0) is True  # lane 0 waits (a refresh) and reads the stop...
    assert agents[1].stopping == "test"  # ...which lane 1 got too
    assert lanes.stopping == "test"


def test_the_earliest_deadline_of_any_lane_is_the_timeout(tmp_path: Path) -> None:
    lanes, agents, _, clock = two_lanes(tmp_path)
    for agent in agents:
        agent.reconcile()
    agents[1]._next_audit = clock.now() + 2.5  # codex's lane is due first
    waits = [agent.next_timeout() for agent in agents]
    assert min(waits) == 2.5
    lanes.events.put(Stop("done"))
    assert lanes.run() == "done"
    assert all(agent.stopping == "done" for agent in agents)
