"""AlertPolicy: when the user hears about a re-login, and what they read (fake clock only)."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.config import NotifySection
from agent.credential import fingerprint_of
from agent.notify.alerts import AlertPolicy, AuthObservation, Notice

HOUR = 3600.0
DAY = 86_400.0
DIRS = ["/home/u/.claude", "/home/u/work/.claude"]

# Token-shaped strings: only their fingerprints are ever given to the policy.
OLD_ACCESS, OLD_REFRESH = "sk-ant-oat01-OLDACCESS-abcdef0123", "sk-ant-ort01-OLDREFRESH-abcdef0123"
NEW_ACCESS, NEW_REFRESH = "sk-ant-oat01-NEWACCESS-456789abcd", "sk-ant-ort01-NEWREFRESH-456789abcd"
OLD_FP, NEW_FP = fingerprint_of(OLD_ACCESS), fingerprint_of(NEW_ACCESS)
TOKENS = (OLD_ACCESS, OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)


def make(clock: FakeClock, **overrides: object) -> AlertPolicy:
    return AlertPolicy(NotifySection.model_validate(overrides), clock)


def rejected(clock: FakeClock, fp: str | None = OLD_FP, reason: str = "refresh rejected",
             dirs: list[str] | None = None) -> AuthObservation:
    return AuthObservation(relogin_required=True, reason=reason,
                           affected_dirs=DIRS if dirs is None else dirs, since=clock.now(),
                           login_fingerprint=fp)


def healthy(fp: str = NEW_FP, expires_at: float | None = None) -> AuthObservation:
    return AuthObservation(relogin_required=False, valid_login_fingerprint=fp,
                           refresh_token_expires_at=expires_at, affected_dirs=DIRS)


def transient(fp: str = OLD_FP) -> AuthObservation:
    """A network failure while the token is still valid: the login itself is fine."""
    return AuthObservation(relogin_required=False, reason="network unreachable",
                           valid_login_fingerprint=fp, affected_dirs=DIRS)


def run(policy: AlertPolicy, clock: FakeClock, obs: AuthObservation, *, steps: int,
        every_s: float) -> list[Notice]:
    out: list[Notice] = []
    for _ in range(steps):
        out += policy.observe(obs)
        clock.advance(every_s)
    return out


# -- re-login required ----------------------------------------------------------------------


def test_first_rejection_gives_one_critical_notice_naming_problem_fix_dirs_and_time() -> None:
    clock = FakeClock()
    notices = make(clock).observe(rejected(clock))
    assert len(notices) == 1
    n = notices[0]
    assert (n.event, n.urgency, n.time) == ("relogin-required", "critical", clock.now())
    assert "new login" in n.title and "claude auth login" in n.title
    assert n.body.startswith("Refresh rejected")
    assert "`claude auth login`" in n.body and "/login" in n.body
    assert all(d in n.body for d in DIRS)
    assert "Since " in n.body
    assert n.affected_dirs == tuple(DIRS)


def test_same_login_gets_reminders_exactly_every_interval_and_never_in_between() -> None:
    clock = FakeClock()
    start = clock.now()
    policy = make(clock, remind_every_h=4)
    notices = run(policy, clock, rejected(clock), steps=13 * 60, every_s=60)
    assert [n.time - start for n in notices] == [0, 4 * HOUR, 8 * HOUR, 12 * HOUR]
    assert [n.event for n in notices] == ["relogin-required"] + ["relogin-reminder"] * 3
    assert all(n.urgency == "critical" for n in notices)
    assert notices[1].title.startswith("Reminder: ")
    assert "ago)" in notices[1].body  # says how long it has lasted


def test_flood_of_rejections_and_store_changes_inside_the_interval_gives_one_notice() -> None:
    clock = FakeClock()
    policy = make(clock, remind_every_h=4)
    notices: list[Notice] = []
    step = (4 * HOUR - 1) / 700
    for i in range(500):
        notices += policy.observe(rejected(clock))
        clock.advance(step)
        if i % 5 < 2:  # 200 store changes in between, cleared, half naming no login at all
            cleared = rejected(clock, fp=None if i % 2 else OLD_FP, reason="every store cleared",
                               dirs=[DIRS[i % 2], f"/tmp/cfg{i % 7}"])
            notices += policy.observe(cleared)
            notices += policy.observe(transient())
            clock.advance(step)
    assert clock.now() - notices[0].time < 4 * HOUR
    assert [n.event for n in notices] == ["relogin-required"]
    alert = policy.active_alert
    assert alert is not None and "/tmp/cfg6" in alert.affected_dirs  # dirs were merged
    policy.observe(rejected(clock, fp=None, reason="every store cleared"))
    alert = policy.active_alert
    assert alert is not None and alert.body.startswith("Every store cleared")  # latest reason


def test_reminder_keeps_its_cadence_when_the_wall_clock_goes_back() -> None:
    clock = FakeClock()
    policy = make(clock, remind_every_h=4)
    assert len(policy.observe(rejected(clock))) == 1
    clock.jump(-10 * DAY)  # the clock was set back: the next reminder is 4 h from now, not 10 d
    assert policy.observe(rejected(clock)) == []
    clock.advance(4 * HOUR - 1)
    assert policy.observe(rejected(clock)) == []
    clock.advance(1)
    assert [n.event for n in policy.observe(rejected(clock))] == ["relogin-reminder"]


def test_alert_lasts_through_transient_rounds_and_reminds_on_them_too() -> None:
    clock = FakeClock()
    policy = make(clock, remind_every_h=1)
    policy.observe(rejected(clock))
    notices = run(policy, clock, AuthObservation(relogin_required=False), steps=61, every_s=60)
    assert [n.event for n in notices] == ["relogin-reminder"]
    assert policy.active_alert is not None


# -- recovery ---------------------------------------------------------------------------------


def test_new_valid_login_clears_the_alert_with_one_restored_notice() -> None:
    clock = FakeClock()
    policy = make(clock)
    since = clock.now()
    policy.observe(rejected(clock))
    clock.advance(HOUR)
    notices = policy.observe(healthy(NEW_FP))
    assert len(notices) == 1
    n = notices[0]
    assert (n.event, n.urgency) == ("restored", "normal")
    assert "restored" in n.title and "Nothing more to do" in n.body
    assert n.affected_dirs == tuple(DIRS)
    assert policy.active_alert is None
    assert run(policy, clock, healthy(NEW_FP), steps=100, every_s=HOUR) == []
    assert since < n.time


def test_restore_notice_can_be_turned_off_but_the_alert_still_clears() -> None:
    clock = FakeClock()
    policy = make(clock, notify_on_restore=False)
    policy.observe(rejected(clock))
    assert policy.observe(healthy(NEW_FP)) == []
    assert policy.active_alert is None


def test_seeing_the_dead_login_again_is_not_a_recovery() -> None:
    clock = FakeClock()
    policy = make(clock)
    policy.observe(rejected(clock, fp=OLD_FP))
    assert policy.observe(healthy(OLD_FP)) == []
    assert policy.active_alert is not None


def test_cleared_stores_naming_no_login_are_blamed_on_the_last_valid_one() -> None:
    clock = FakeClock()
    policy = make(clock)
    assert policy.observe(healthy(OLD_FP)) == []
    assert len(policy.observe(rejected(clock, fp=None, reason="every store cleared"))) == 1
    # The same (dead) login showing up again is no recovery, so no restore/alert ping-pong.
    assert policy.observe(healthy(OLD_FP)) == []
    alert = policy.active_alert
    assert alert is not None and alert.fingerprints == (OLD_FP,)


def test_a_new_login_failing_later_gets_its_own_first_notice() -> None:
    clock = FakeClock()
    policy = make(clock)
    policy.observe(rejected(clock, fp=OLD_FP))
    policy.observe(healthy(NEW_FP))
    clock.advance(60)
    notices = policy.observe(rejected(clock, fp=NEW_FP))
    assert [n.event for n in notices] == ["relogin-required"]


def test_a_login_already_alerted_does_not_get_a_second_first_notice_when_it_flaps() -> None:
    clock = FakeClock()
    start = clock.now()
    policy = make(clock, remind_every_h=4)
    policy.observe(rejected(clock, fp=OLD_FP))
    clock.advance(60)
    policy.observe(healthy(NEW_FP))  # restored ...
    clock.advance(60)
    policy.observe(rejected(clock, fp=OLD_FP))  # ... and the old login is reported dead again
    notices = run(policy, clock, rejected(clock, fp=OLD_FP), steps=5 * 60, every_s=60)
    assert [(n.event, n.time - start) for n in notices] == [("relogin-reminder", 4 * HOUR)]


def test_no_restored_notice_for_an_episode_the_user_never_heard_of() -> None:
    clock = FakeClock()
    policy = make(clock)
    policy.observe(rejected(clock, fp=OLD_FP))
    policy.observe(healthy(NEW_FP))
    policy.observe(rejected(clock, fp=OLD_FP))  # silent: OLD was alerted already
    assert policy.observe(healthy("another-fp")) == []
    assert policy.active_alert is None


# -- ahead of time ----------------------------------------------------------------------------


def test_warn_ahead_comes_once_a_day_inside_the_window_and_says_when_and_how() -> None:
    clock = FakeClock()
    start = clock.now()
    ends = start + 5 * DAY
    policy = make(clock, warn_before_days=3)
    notices = run(policy, clock, healthy(NEW_FP, expires_at=ends), steps=6 * 24 * 6,
                  every_s=600)
    assert [n.time - start for n in notices] == [2 * DAY, 3 * DAY, 4 * DAY]
    assert {n.event for n in notices} == {"refresh-token-expiring"}
    assert {n.urgency for n in notices} == {"normal"}
    first = notices[0]
    assert "3 days" in first.title and "claude auth login" in first.title
    assert "`claude auth login`" in first.body and "/login" in first.body
    assert all(d in first.body for d in DIRS)
    assert "cannot be renewed after" in first.body


def test_warn_ahead_is_off_with_zero_days_and_silent_during_an_alert() -> None:
    clock = FakeClock()
    soon = clock.now() + HOUR
    assert make(clock, warn_before_days=0).observe(healthy(NEW_FP, expires_at=soon)) == []
    policy = make(clock)
    policy.observe(rejected(clock))
    obs = AuthObservation(relogin_required=False, refresh_token_expires_at=soon)
    assert policy.observe(obs) == []


# -- never ------------------------------------------------------------------------------------


def test_transient_failures_and_healthy_rounds_never_notify() -> None:
    clock = FakeClock()
    far = clock.now() + 60 * DAY
    policy = make(clock)
    for i in range(2000):
        obs = transient() if i % 2 else healthy(OLD_FP, expires_at=far)
        assert policy.observe(obs) == []
        clock.advance(HOUR / 4)
    assert policy.active_alert is None


def test_restart_during_an_alert_sends_nothing_new_and_keeps_the_reminder_schedule() -> None:
    clock = FakeClock()
    start = clock.now()
    policy = make(clock, remind_every_h=4)
    policy.observe(rejected(clock))
    clock.advance(HOUR)
    saved = policy.to_json()
    # The agent stops and starts again: a fresh object from the saved state.
    restarted = AlertPolicy.from_json(saved, NotifySection(remind_every_h=4), clock)
    assert restarted.active_alert == policy.active_alert
    notices = run(restarted, clock, rejected(clock), steps=4 * 60, every_s=60)
    assert [(n.event, n.time - start) for n in notices] == [("relogin-reminder", 4 * HOUR)]
    # Recovery after the restart still sends the restore notice.
    assert [n.event for n in restarted.observe(healthy(NEW_FP))] == ["restored"]


def test_restart_after_a_warning_does_not_warn_again_the_same_day() -> None:
    clock = FakeClock()
    obs = healthy(NEW_FP, expires_at=clock.now() + DAY)
    policy = make(clock)
    assert len(policy.observe(obs)) == 1
    restarted = AlertPolicy.from_json(policy.to_json(), NotifySection(), clock)
    clock.advance(DAY / 2)
    assert restarted.observe(obs) == []


def test_unreadable_saved_state_starts_afresh_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.WARNING, logger="agent.notify.alerts")
    for text in ("not json", "[]", json.dumps({"version": 99}),
                 json.dumps({"version": 1, "episode": None, "alerted": [],
                             "last_relogin_notice_at": "yesterday", "warned_at": None,
                             "last_valid": None})):
        policy = AlertPolicy.from_json(text, NotifySection(), clock)
        assert policy.active_alert is None
        assert len(policy.observe(rejected(clock))) == 1
    assert caplog.text.count("alert state unreadable") == 4


# -- what it says -----------------------------------------------------------------------------


def test_no_token_ever_appears_in_notices_status_or_saved_state() -> None:
    clock = FakeClock()
    policy = make(clock, remind_every_h=1, warn_before_days=3)
    seen: list[str] = []
    for notices in (policy.observe(healthy(OLD_FP, expires_at=clock.now() + DAY)),
                    policy.observe(rejected(clock, fp=OLD_FP)),
                    run(policy, clock, rejected(clock, fp=OLD_FP), steps=3, every_s=HOUR),
                    policy.observe(healthy(NEW_FP))):
        seen += [n.title + n.body + " ".join(n.affected_dirs) for n in notices]
    policy.observe(rejected(clock, fp=NEW_FP))
    alert = policy.active_alert
    assert alert is not None
    seen += [alert.title, alert.body, policy.to_json()]
    assert len(seen) == 8  # warning, first notice, 2 reminders, restored, status, state
    blob = "\n".join(seen)
    assert not any(token in blob for token in TOKENS)
    assert OLD_FP in policy.to_json()  # fingerprints are what it keeps


def test_active_alert_describes_the_episode_for_status() -> None:
    clock = FakeClock()
    policy = make(clock)
    assert policy.active_alert is None
    since = clock.now() - 120
    policy.observe(AuthObservation(relogin_required=True, reason="refresh token expired",
                                   affected_dirs=DIRS, since=since, login_fingerprint=OLD_FP))
    alert = policy.active_alert
    assert alert is not None
    assert (alert.event, alert.urgency, alert.since) == ("relogin-required", "critical", since)
    assert alert.fingerprints == (OLD_FP,) and alert.last_notified_at == clock.now()
    assert alert.body.startswith("Refresh token expired") and "2 min ago" in alert.body


def test_observation_keeps_its_own_copy_of_the_dirs() -> None:
    dirs = ["/a"]
    obs = AuthObservation(relogin_required=True, affected_dirs=dirs)
    dirs.append("/b")
    assert obs.affected_dirs == ("/a",)


# -- property: whatever happens, reminders never come early -----------------------------------

_FPS = ["fp-a", "fp-b", None]
_steps = st.lists(st.tuples(
    st.sampled_from(["rejected", "cleared", "transient", "healthy"]),
    st.sampled_from(_FPS), st.floats(min_value=0, max_value=3 * HOUR)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(_steps)
def test_critical_notices_never_come_more_often_than_the_interval(
        steps: list[tuple[str, str | None, float]]) -> None:
    clock = FakeClock()
    policy = make(clock, remind_every_h=4, notify_on_restore=True)
    first_notice_for: dict[str, int] = {}
    last_critical: float | None = None
    for kind, fp, gap in steps:
        clock.advance(gap)
        if kind in ("rejected", "cleared"):
            obs = rejected(clock, fp=fp, reason=kind)
        else:
            obs = transient(fp or "fp-c") if kind == "transient" else healthy(fp or "fp-c")
        alert_before = policy.active_alert
        for n in policy.observe(obs):
            if n.event == "relogin-reminder":
                assert last_critical is not None
                assert n.time - last_critical >= 4 * HOUR
            if n.event == "relogin-required":
                assert alert_before is None  # never a second first notice during an alert
                if obs.login_fingerprint is not None:
                    first_notice_for[obs.login_fingerprint] = \
                        first_notice_for.get(obs.login_fingerprint, 0) + 1
            if n.urgency == "critical":
                last_critical = n.time
    assert all(count == 1 for count in first_notice_for.values())


# -- the cluster offline -------------------------------------------------------------------------

def held(clock: FakeClock, since: float, expires_at: float, due_at: float) -> AuthObservation:
    return AuthObservation(relogin_required=False, valid_login_fingerprint=OLD_FP,
                           affected_dirs=DIRS, held="the cluster's Redis cannot be reached",
                           held_since=since, due_at=due_at, expires_at=expires_at)


def test_cluster_offline_one_normal_notice_when_due_one_critical_before_the_cli_window() -> None:
    clock = FakeClock()
    policy = make(clock)
    start = clock.now()
    expires = start + 8 * HOUR
    due = expires - 1.6 * HOUR
    assert policy.observe(held(clock, start, expires, due)) == []  # not due yet: silent
    clock.advance(due - clock.now())
    first = policy.observe(held(clock, start, expires, due))
    assert [(n.event, n.urgency) for n in first] == [("cluster-offline", "normal")]
    assert "offline since" in first[0].body.lower() and "cluster leave" in first[0].body
    clock.advance(10 * 60)
    assert policy.observe(held(clock, start, expires, due)) == []  # said once
    critical_at = expires - 300 - 1800
    clock.advance(critical_at - clock.now())
    second = policy.observe(held(clock, start, expires, due))
    assert [(n.event, n.urgency) for n in second] == [("cluster-offline", "critical")]
    assert clock.now() < expires - 300  # before the CLI's own window
    assert policy.observe(held(clock, start, expires, due)) == []
    # Redis back: the next outage is told afresh, and it survives a restart in between
    assert policy.observe(healthy(OLD_FP)) == []
    again = AlertPolicy.from_json(policy.to_json(), NotifySection(), clock)
    later = clock.now()
    notices = again.observe(held(clock, later, expires, due))
    assert [n.urgency for n in notices] == ["critical"]
    restored = AlertPolicy.from_json(again.to_json(), NotifySection(), clock)
    assert restored.observe(held(clock, later, expires, due)) == []
    for notice in first + second + notices:
        assert not any(t in notice.title + notice.body for t in TOKENS)


def test_a_codex_alert_names_the_codex_homes_of_its_account() -> None:
    from agent.notify.alerts import CODEX

    clock = FakeClock()
    policy = AlertPolicy(NotifySection.model_validate({}), clock, CODEX)
    [notice] = policy.observe(rejected(clock, dirs=["/home/u/work/.codex"]))
    assert notice.title == "Codex needs a new login: run codex login"
    assert "Affected Codex homes: /home/u/work/.codex." in notice.body
    assert AlertPolicy(NotifySection.model_validate({}), clock, CODEX).observe(healthy()) == []
    nameless = AlertPolicy(NotifySection.model_validate({}), clock, CODEX).observe(
        rejected(clock, dirs=[]))
    assert "Affected Codex homes: the configured Codex homes." in nameless[0].body
