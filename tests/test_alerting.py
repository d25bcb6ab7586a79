"""Re-login alerts end to end: the agent's observations, the policy, and a real dunst."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import NotifySection, RefreshSection
from agent.credential import Credential, Reading, ReadState
from agent.errors import InvalidGrantError
from agent.ledger import Ledger, StoreMemory, token_hash
from agent.loop.agent import Agent
from agent.notify.alerting import Alerting, observation
from agent.notify.alerts import Notice
from agent.reconcile import Reconciler
from agent.refresh.coordinator import Coordinator, RefreshDriver
from agent.sim.server import OAuthServer
from agent.stores.claude_file import ClaudeFileStore
from agent.winner import Role, Rules, judge
from tests.agentproc import AgentProcess, wait_for, write_config
from tests.factories import CLEARED, make_cred, write_cred, write_doc
from tests.realdesktop import RealDesktop, real_desktop_fixture  # noqa: F401
from tests.test_refresh import Backoff, ScriptedRefresher

START = 1_800_000_000.0


class RecordingNotifier:
    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def send(self, notice: Notice) -> object:
        self.notices.append(notice)
        return "recorded"

    def close(self) -> None:
        pass


def test_observation_rules() -> None:
    good = make_cred(int((START + 3600) * 1000))
    dirs = {"file:a": "/a", "file:b": "/b"}
    roles = {"file:a": Role.HOLDER, "file:b": Role.HOLDER}
    valid = {n: Reading(ReadState.VALID, good) for n in dirs}
    refused = Rules(START, rejected=frozenset({token_hash(good.refresh_token)}))

    def seen(readings: dict[str, Reading], last_good: Credential | None = None,
             rules: Rules | None = None, memory: dict[str, StoreMemory] | None = None) -> Any:
        verdict = judge(readings, roles, memory or {}, last_good, rules or Rules(START))
        return observation(verdict, dirs, START)

    ok = seen(valid)
    assert not ok.relogin_required and ok.valid_login_fingerprint == good.fingerprint
    obs = seen(valid, rules=refused)
    assert obs.relogin_required and obs.login_fingerprint == good.fingerprint
    cleared = {n: Reading(ReadState.CLEARED, Credential.build("", "", 0)) for n in dirs}
    # cleared everywhere with a good copy left: the guardian restores it, no alarm
    assert not seen(cleared, good).relogin_required
    gone = seen(cleared, good, refused)
    assert gone.relogin_required and gone.login_fingerprint == good.fingerprint
    assert list(gone.affected_dirs) == ["/a", "/b"]
    # a deliberate logout everywhere is not an alarm, whatever the copies hold
    out = {n: Reading(ReadState.LOGGED_OUT) for n in dirs}
    assert not seen(out, good).relogin_required
    # a refresh token past its stated expiry is tried first: the server decides
    expired_rt = make_cred(int((START + 3600) * 1000),
                           refreshTokenExpiresAt=int((START - 1) * 1000))
    assert not seen({n: Reading(ReadState.VALID, expired_rt) for n in dirs}).relogin_required


def test_a_flood_of_failures_gives_one_notice_and_recovery_one_restore(tmp_path: Path) -> None:
    clock = FakeClock(START)
    dirs = [tmp_path / f"cfg{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    stores = [ClaudeFileStore(d) for d in dirs]
    state = Ledger(tmp_path / "state")
    refresher = ScriptedRefresher(clock)
    coord = Coordinator(RefreshSection(jitter=0), Reconciler(stores, state, clock), dirs,
                        refresher, clock,
                        lock_wait_s=1, cli_lock_wait_s=0.5)
    notifier = RecordingNotifier()
    alerting = Alerting(NotifySection(), notifier, state, clock)
    agent = Agent(stores, state, clock, queue.Queue(), refresh=RefreshDriver(coord, Backoff()),
                  alerting=alerting)
    cred = make_cred(int((START + 100) * 1000))
    for d in dirs:
        write_cred(d, cred)
    agent.reconcile()
    refresher.script = [InvalidGrantError("invalid_grant")] * 600
    for i in range(500):
        coord.run(None, force=True)
        agent.reconcile()
        if i < 200:  # the CLI clearing, garbage, re-writes: 200 store changes
            write_doc(dirs[i % 3], {"claudeAiOauth": CLEARED} if i % 2 else {"x": 1})
            clock.advance(1)
    assert [n.event for n in notifier.notices] == ["relogin-required"]
    assert notifier.notices[0].urgency == "critical"
    assert len(refresher.sent) == 1  # the refused token is never sent again
    clock.advance(4 * 3600)
    agent.reconcile()
    assert [n.event for n in notifier.notices][-1] == "relogin-reminder"
    # the user logs in again in one session
    write_cred(dirs[1], make_cred(int((START + 20 * 3600) * 1000)))
    agent.reconcile()
    agent.reconcile()
    assert [n.event for n in notifier.notices] == ["relogin-required", "relogin-reminder",
                                                    "restored"]
    assert alerting.active is None
    # and the restart does not repeat anything
    again = Alerting(NotifySection(), notifier, state, clock)
    assert again.active is None


@pytest.mark.integration
def test_agent_tells_the_user_once_on_a_real_desktop_and_clears_on_login(
        tmp_path: Path, real_desktop: RealDesktop) -> None:
    with OAuthServer(access_lifetime_s=3600) as server:
        dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
        login = server.issue_login()
        # a refresh token the server never issued: the refresh will be refused
        login.update(refreshToken="not-a-known-token", expiresAt=int((time.time() + 100) * 1000))
        for d in dirs:
            write_doc(d, {"claudeAiOauth": login})
        hook = tmp_path / "hook.sh.jsonl"  # the script appends to "$0.jsonl"
        script = tmp_path / "hook.sh"
        script.write_text('#!/bin/sh\nprintf \'{"event":"%s","urgency":"%s"}\\n\' '
                          '"$CREDSYNC_EVENT" "$CREDSYNC_URGENCY" >> "$0.jsonl"\n')
        script.chmod(0o755)
        config = write_config(tmp_path / "config.toml", dirs, tmp_path / "state",
                              keychain=False, refresh={"token_url": server.url},
                              notify={"command": [str(script)]})
        agent = AgentProcess(config, real_desktop.env)
        try:
            agent.wait_started(tmp_path / "state")
            wait_for(lambda: any(r.get("DUNST_URGENCY") == "CRITICAL"
                                 for r in real_desktop.records()), 20, "the critical alert")
            shot = real_desktop.screenshot(Path("artifacts") / "relogin-alert.png")
            assert shot.stat().st_size > 0
            wait_for(lambda: hook.exists() and "relogin-required" in hook.read_text(), 10, "hook")
            alert = next(r for r in real_desktop.records() if r["DUNST_URGENCY"] == "CRITICAL")
            assert alert["DUNST_APP_NAME"] == "credsync"
            assert "/login" in alert["DUNST_BODY"] or "login" in alert["DUNST_BODY"]
            assert "not-a-known-token" not in json.dumps(real_desktop.records())
            # the user logs in again in one session: the alert clears, one restore notice
            fresh = server.issue_login()
            write_doc(dirs[1], {"claudeAiOauth": fresh})
            wait_for(lambda: any(r.get("DUNST_URGENCY") == "NORMAL"
                                 for r in real_desktop.records()), 20, "the restored notice")
            # The new login, or its successor: the agent may refresh it at once (its 1 h
            # lifetime is past 80 % of the nominal 8 h), so the fresh token itself can be
            # gone from cfg0 before a poll sees it. Its family, alive, must be there.
            family = server.family_of(fresh["accessToken"])

            def propagated() -> bool:
                token = json.loads((dirs[0] / ".credentials.json").read_text())[
                    "claudeAiOauth"]["accessToken"]
                return server.family_of(token) == family and server.check_access(token)
            wait_for(propagated, 10, "propagated")
            events = [json.loads(line)["event"] for line in hook.read_text().splitlines()]
            assert events == ["relogin-required", "restored"]
            assert sum(r["DUNST_URGENCY"] == "CRITICAL" for r in real_desktop.records()) == 1
        finally:
            agent.stop()
