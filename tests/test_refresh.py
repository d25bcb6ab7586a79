"""The refresh schedule and coordinator, with a fake clock and a scripted refresher."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.config import RefreshSection
from agent.credential import Credential
from agent.errors import InvalidGrantError, TransientRefreshError
from agent.ledger import Ledger
from agent.locks.mkdirlock import OAUTH_REFRESH_STALE_S, oauth_refresh_lock
from agent.reconcile import Reconciler
from agent.refresh.coordinator import Coordinator, RefreshDriver, Schedule
from agent.stores.claude_file import ClaudeFileStore
from tests.factories import make_cred, write_cred

START = 1_800_000_000.0
HOUR = 3600.0


@dataclass
class Result:
    credential: Credential
    expires_in: float


class ScriptedRefresher:
    """Answers from a script; each item is 'ok' or an exception. Otherwise it behaves as the
    token server does (tests/test_refresher_contract.py): a new pair, every other key kept, a
    refresh token redeemed once only."""

    def __init__(self, clock: FakeClock, lifetime: float = 8 * HOUR) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.script: list[object] = []
        self.sent: list[str] = []
        self.redeemed: set[str] = set()

    def refresh(self, cred: Credential) -> Result:
        self.sent.append(cred.refresh_token)
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, Exception):
            raise step
        if not cred.refresh_token or cred.refresh_token in self.redeemed:
            raise InvalidGrantError("invalid_grant: the refresh token is not valid")
        self.redeemed.add(cred.refresh_token)
        fresh = make_cred(int((self.clock.now() + self.lifetime) * 1000))
        new = Credential({**cred.oauth, "accessToken": fresh.access_token,
                          "refreshToken": fresh.refresh_token, "expiresAt": fresh.expires_at_ms})
        return Result(new, self.lifetime)


class Backoff:
    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        return max(2.0 ** attempt, retry_after_s or 0)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Coordinator, ScriptedRefresher, FakeClock, list[Path]]:
    clock = FakeClock(START)
    dirs = [tmp_path / f"cfg{i}" for i in range(2)]
    for d in dirs:
        d.mkdir()
    stores = [ClaudeFileStore(d) for d in dirs]
    refresher = ScriptedRefresher(clock)
    section = RefreshSection(jitter=0)
    coord = Coordinator(section, Reconciler(stores, Ledger(tmp_path / "state"), clock), dirs,
                        refresher, clock,
                        lock_wait_s=1, cli_lock_wait_s=0.5)
    return coord, refresher, clock, dirs


def test_deadline_is_at_fraction_of_lifetime_and_before_the_cli_window() -> None:
    sched = Schedule(RefreshSection(jitter=0), salt="s")
    cred = make_cred(int((START + 8 * HOUR) * 1000))
    assert sched.deadline(cred, 8 * HOUR) == pytest.approx(START + 0.8 * 8 * HOUR)
    short = RefreshSection(jitter=0, at_fraction=0.99, client_window_s=300, margin_s=60)
    assert Schedule(short, "s").deadline(cred, 8 * HOUR) == pytest.approx(
        START + 8 * HOUR - 360)


def test_jitter_stays_within_bounds_and_is_stable_per_credential() -> None:
    sched = Schedule(RefreshSection(jitter=0.05), salt="machine-a")
    for _ in range(200):
        cred = make_cred(int((START + 8 * HOUR) * 1000))
        d = sched.deadline(cred, 8 * HOUR)
        assert START + 0.75 * 8 * HOUR <= d <= START + 0.85 * 8 * HOUR
        assert sched.deadline(cred, 8 * HOUR) == d


def test_lock_stale_time_exceeds_the_worst_case_refresh() -> None:
    from agent.config import ATTEMPTS_PER_LOCK

    worst = RefreshSection.model_fields["timeout_s"].metadata
    limit = next(m.lt for m in worst if hasattr(m, "lt"))
    assert limit * ATTEMPTS_PER_LOCK <= OAUTH_REFRESH_STALE_S
    with pytest.raises(ValueError):
        RefreshSection(timeout_s=OAUTH_REFRESH_STALE_S)


def test_refresh_when_due_writes_every_store_and_persists_first(setup) -> None:  # type: ignore[no-untyped-def]
    coord, refresher, clock, dirs = setup
    cred = make_cred(int((START + 8 * HOUR) * 1000))
    write_cred(dirs[0], cred)
    write_cred(dirs[1], cred)
    assert coord.run(cred).kind == "not-due"
    clock.advance(0.81 * 8 * HOUR)
    out = coord.run(cred)
    assert out.kind == "refreshed" and out.credential is not None
    assert refresher.sent == [cred.refresh_token]
    assert all(ClaudeFileStore(d).read().valid == out.credential for d in dirs)
    assert coord.ledger.load_last_good() == out.credential
    assert coord.records.lifetime_s == 8 * HOUR
    assert not any(d.joinpath(".oauth_refresh.lock").exists() for d in dirs)


def test_a_fresher_credential_on_disk_is_adopted_without_a_request(setup) -> None:  # type: ignore[no-untyped-def]
    coord, refresher, _clock, dirs = setup
    old = make_cred(int((START + HOUR) * 1000))
    write_cred(dirs[0], old)
    newer = make_cred(int((START + 8 * HOUR) * 1000))
    write_cred(dirs[1], newer)  # another process refreshed meanwhile
    out = coord.run(old, force=True)
    assert out.kind == "adopted" and out.credential == newer
    assert refresher.sent == []


def test_never_sends_the_same_refresh_token_twice(setup) -> None:  # type: ignore[no-untyped-def]
    coord, refresher, clock, dirs = setup
    cred = make_cred(int((START + HOUR) * 1000))
    write_cred(dirs[0], cred)
    refresher.script = [TransientRefreshError("lost", may_have_rotated=True)]
    out = coord.run(cred, force=True)
    assert out.kind == "relogin-required"
    out = coord.run(cred, force=True)
    assert refresher.sent == [cred.refresh_token]
    # a restart does not forget it either
    again = Coordinator(coord.section, Reconciler(coord.stores, coord.ledger, clock), dirs,
                        refresher, clock)
    assert again.journal.was_sent(cred.refresh_token)


def test_transient_failure_keeps_the_token_usable(setup) -> None:  # type: ignore[no-untyped-def]
    coord, refresher, _clock, dirs = setup
    cred = make_cred(int((START + HOUR) * 1000))
    write_cred(dirs[0], cred)
    refresher.script = [TransientRefreshError("503", retry_after_s=7)]
    out = coord.run(cred, force=True)
    assert out.kind == "transient" and out.retry_after_s == 7
    assert coord.refresh_state() == "retrying"
    assert coord.run(cred, force=True).kind == "refreshed"
    assert refresher.sent == [cred.refresh_token, cred.refresh_token]


def test_invalid_grant_rereads_then_requires_relogin(setup) -> None:  # type: ignore[no-untyped-def]
    coord, refresher, _clock, dirs = setup
    cred = make_cred(int((START + HOUR) * 1000))
    write_cred(dirs[0], cred)
    refresher.script = [InvalidGrantError("invalid_grant")]
    out = coord.run(cred, force=True)
    assert out.kind == "relogin-required"
    assert coord.refresh_state() == "relogin-required"
    # nothing is cleared or deleted
    assert ClaudeFileStore(dirs[0]).read().valid == cred


def test_cli_lock_held_by_a_live_process_means_busy(setup) -> None:  # type: ignore[no-untyped-def]
    coord, refresher, _clock, dirs = setup
    cred = make_cred(int((START + HOUR) * 1000))
    write_cred(dirs[0], cred)
    with oauth_refresh_lock(dirs[1]).hold(1):
        out = coord.run(cred, force=True)
    assert out.kind == "busy" and refresher.sent == []


def test_driver_refreshes_on_time_and_backs_off(setup) -> None:  # type: ignore[no-untyped-def]
    coord, refresher, clock, dirs = setup
    cred = make_cred(int((START + 8 * HOUR) * 1000))
    write_cred(dirs[0], cred)
    driver = RefreshDriver(coord, Backoff())
    driver.observe(cred)
    due = driver.next_at()
    assert due == pytest.approx(START + 0.8 * 8 * HOUR)
    clock.advance(due - START - 1)
    assert driver.due(clock.now()) is None
    refresher.script = [TransientRefreshError("down"), TransientRefreshError("down")]
    clock.advance(1)
    assert driver.due(clock.now()).kind == "transient"  # type: ignore[union-attr]
    assert driver.next_at() == pytest.approx(clock.now() + 1)
    clock.advance(1)
    assert driver.due(clock.now()).kind == "transient"  # type: ignore[union-attr]
    assert driver.next_at() == pytest.approx(clock.now() + 2)
    clock.advance(2)
    out = driver.due(clock.now())
    assert out is not None and out.kind == "refreshed"
    assert driver.next_at() == pytest.approx(clock.now() + 0.8 * 8 * HOUR)


def test_driver_after_suspend_refreshes_at_once(setup) -> None:  # type: ignore[no-untyped-def]
    coord, refresher, clock, dirs = setup
    cred = make_cred(int((START + 8 * HOUR) * 1000))
    write_cred(dirs[0], cred)
    driver = RefreshDriver(coord, Backoff())
    driver.observe(cred)
    # A real suspend: the monotonic clock stood still, the wall clock went on past the
    # deadline and the expiry. No jitter: the herd is this machine's own sessions.
    clock.jump(9 * HOUR)
    out = driver.due(clock.now())
    assert out is not None and out.kind == "refreshed" and len(refresher.sent) == 1


def test_a_refresh_answer_with_a_shorter_life_still_replaces_the_spent_login(
        setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import queue

    from agent.loop.agent import Agent

    coord, refresher, clock, dirs = setup
    old = make_cred(int((START + 2 * HOUR) * 1000))
    for d in dirs:
        write_cred(d, old)
    refresher.lifetime = 0.5 * HOUR  # the server shortened the lifetime
    out = coord.run(old, force=True)
    assert out.kind == "refreshed" and out.credential is not None
    new = out.credential
    assert new.expires_at < old.expires_at
    assert all(ClaudeFileStore(d).read().valid == new for d in dirs)
    # a store still holding the spent login (written by a slow process) is brought forward too
    write_cred(dirs[1], old)
    agent = Agent(coord.stores, coord.ledger, clock, queue.Queue(),
                  refresh=RefreshDriver(coord, Backoff()))
    report = agent.reconcile()
    assert report.winner == new
    assert all(ClaudeFileStore(d).read().valid == new for d in dirs)
