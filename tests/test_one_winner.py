"""One winner rule: the loop, ``token``, ``refresh`` and ``status`` name the same login.

Each situation is set up on disk (credential files, a sink, the ledger's journal, memory and
last-good copy); then every consumer is asked, in an order where none changes what the next
one sees (the loop writes the stores, so it goes last)."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.config import Settings, load_settings
from agent.credential import Credential
from agent.errors import ReloginRequired
from agent.ledger import StoreMemory, token_hash
from agent.loop.agent import Agent
from agent.loop.build import build_stores, ledger_of
from agent.loop.runtime import collect_status, coordinator, valid_token
from tests.agentproc import write_config
from tests.factories import make_cred, write_cred

HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


class Scene:
    def __init__(self, tmp: Path) -> None:
        self.dirs = [tmp / "cfg0", tmp / "cfg1"]
        for d in self.dirs:
            d.mkdir()
        self.sink = tmp / "sink" / "token"
        self.path = write_config(tmp / "config.toml", self.dirs, tmp / "state", keychain=False,
                                 sinks=[{"path": self.sink}],
                                 refresh={"token_url": "http://127.0.0.1:9/token"})
        self.settings: Settings = load_settings(self.path)[0]
        self.ledger = ledger_of(self.settings)
        self.ledger.ensure()

    def names(self) -> list[str]:
        return [f"file:{d}" for d in self.dirs]


def spent(scene: Scene, cred: Credential) -> None:
    scene.ledger.journal.record(cred.refresh_token, time.time())


def refused(scene: Scene, cred: Credential) -> None:
    scene.ledger.journal.reject(token_hash(cred.refresh_token), time.time())


def rejected_fresher(scene: Scene) -> Credential | None:
    # The loop inferred that the server refused B (cleared again after a restore): nobody may
    # hand B out, or redeem it, although it expires last.
    a, b = make_cred(now_ms() + 6 * HOUR_MS), make_cred(now_ms() + 7 * HOUR_MS)
    write_cred(scene.dirs[0], a)
    write_cred(scene.dirs[1], b)
    refused(scene, b)
    return a


def spent_with_a_longer_life(scene: Scene) -> Credential | None:
    old, new = make_cred(now_ms() + 7 * HOUR_MS), make_cred(now_ms() + 1 * HOUR_MS)
    write_cred(scene.dirs[0], old)
    write_cred(scene.dirs[1], new)
    spent(scene, old)  # new is the answer to redeeming old: it wins despite its shorter life
    return new


def implausible_expiry(scene: Scene) -> Credential | None:
    fresh = make_cred(now_ms() + 6 * HOUR_MS)
    write_cred(scene.dirs[0], make_cred(253_402_300_799_999))
    write_cred(scene.dirs[1], fresh)
    return fresh


def logged_out_everywhere(scene: Scene) -> Credential | None:
    scene.ledger.save_last_good(make_cred(now_ms() + 6 * HOUR_MS))
    scene.ledger.save_memory({n: StoreMemory(seen_valid=True) for n in scene.names()})
    return None  # both files gone after holding a login: the login is over


def a_sink_holding_something_else(scene: Scene) -> Credential | None:
    a = make_cred(now_ms() + 6 * HOUR_MS)
    write_cred(scene.dirs[0], a)
    scene.sink.parent.mkdir(mode=0o700)
    scene.sink.write_text(make_cred(now_ms() + 8 * HOUR_MS).access_token + "\n")
    return a


SITUATIONS: dict[str, Callable[[Scene], Credential | None]] = {
    "rejected fresher": rejected_fresher,
    "spent with a longer life": spent_with_a_longer_life,
    "implausible expiry": implausible_expiry,
    "logged out everywhere": logged_out_everywhere,
    "a sink holding something else": a_sink_holding_something_else,
}


def token_answer(settings: Settings) -> str | None:
    try:
        return valid_token(settings)
    except ReloginRequired:
        return None


@pytest.mark.parametrize("situation", list(SITUATIONS))
def test_loop_token_refresh_and_status_name_the_same_winner(tmp_path: Path,
                                                            situation: str) -> None:
    scene = Scene(tmp_path)
    expected = SITUATIONS[situation](scene)
    want = expected.fingerprint if expected else None
    token = token_answer(scene.settings)
    status = collect_status(scene.settings, scene.path)
    with coordinator(scene.settings, SystemClock()) as coord:
        refresh_best = coord.best()
    stores = build_stores(scene.settings)
    loop = Agent(stores, scene.ledger, SystemClock(), queue.Queue()).reconcile().winner
    named = {
        "token": Credential.build(token, "x", 1).fingerprint if token else None,
        "status": status.best.fingerprint if status.best else None,
        "refresh": refresh_best.fingerprint if refresh_best else None,
        "loop": loop.fingerprint if loop else None,
    }
    assert named == dict.fromkeys(named, want), json.dumps(named)
    if expected is None:
        assert status.login_state == "logged-out"
