"""``credsync run`` as a real process: real files, real inotify, the real Secret Service."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.credential import Credential, parse_document
from agent.ledger import Ledger
from agent.stores.keychain import OWN_SERVICE, own_account
from tests.agentproc import AgentProcess, credsync, wait_for, write_config
from tests.factories import CLEARED, make_cred, read_doc, write_cred, write_doc
from tests.realkeyring import RealKeyring, real_keyring  # noqa: F401

pytestmark = pytest.mark.integration
BASE_MS = (int(time.time()) + 6 * 3600) * 1000  # a real login: expires within a day
SINK_FORMATS = ["access-token", "env", "json", "claude", "access-token"]


@dataclass
class Scene:
    root: Path
    dirs: list[Path]
    sinks: list[Path]
    state: Path
    config: Path
    keyring: RealKeyring
    agent: AgentProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        return self.keyring.env

    def start(self) -> AgentProcess:
        self.agent = AgentProcess(self.config, self.env)
        self.agent.wait_started(self.state)
        return self.agent

    def keychain_cred(self) -> Credential | None:
        raw = self.keyring.lookup(OWN_SERVICE, own_account(self.dirs))
        return parse_document(raw.encode())[0].valid if raw else None

    def file_cred(self, d: Path) -> Credential | None:
        try:
            return parse_document((d / ".credentials.json").read_bytes())[0].valid
        except FileNotFoundError:
            return None

    def sink_holds(self, cred: Credential) -> bool:
        return all(p.exists() and cred.access_token in p.read_text() for p in self.sinks)

    def everywhere(self, cred: Credential, keychain: bool = True) -> bool:
        files = all(self.file_cred(d) == cred for d in self.dirs)
        return files and self.sink_holds(cred) and (not keychain or self.keychain_cred() == cred)


@pytest.fixture
def scene(tmp_path: Path, real_keyring: RealKeyring) -> Iterator[Scene]:  # noqa: F811
    dirs = [tmp_path / f"cfg{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    sinks = [tmp_path / "sessions" / f"s{i}" / "token" for i in range(5)]
    state = tmp_path / "state"
    config = write_config(tmp_path / "config.toml", dirs, state, log_level="debug",
                          log_file=tmp_path / "log" / "credsync.log",
                          sinks=[{"path": p, "format": f}
                                 for p, f in zip(sinks, SINK_FORMATS, strict=True)])
    s = Scene(tmp_path, dirs, sinks, state, config, real_keyring)
    yield s
    if s.agent is not None:
        s.agent.kill()


def atomic_cli_write(d: Path, cred: Credential) -> None:
    """What the CLI does: temp file + rename."""
    tmp = d / ".credentials.json.tmp"
    tmp.write_text(json.dumps({"claudeAiOauth": cred.to_json_obj()}))
    os.replace(tmp, d / ".credentials.json")


def test_a_write_in_one_dir_reaches_every_store(scene: Scene) -> None:
    first = make_cred(BASE_MS)
    write_cred(scene.dirs[0], first, mcpOAuth={"srv": {"accessToken": "keep-me"}})
    scene.start()
    wait_for(lambda: scene.everywhere(first), 10, "the first login everywhere")
    newer = make_cred(BASE_MS + 60_000)
    atomic_cli_write(scene.dirs[2], newer)
    took = wait_for(lambda: scene.everywhere(newer), 5, "the newer login everywhere")
    assert took < 2
    # only claudeAiOauth changed in the dir that had other keys
    assert read_doc(scene.dirs[0])["mcpOAuth"] == {"srv": {"accessToken": "keep-me"}}
    for path in [*(d / ".credentials.json" for d in scene.dirs[:2]), *scene.sinks]:  # agent-written
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for sink in scene.sinks:
        assert stat.S_IMODE(sink.parent.stat().st_mode) == 0o700
    env_sink = scene.sinks[1].read_text()
    assert env_sink == f"CLAUDE_CODE_OAUTH_TOKEN={newer.access_token}\n"
    assert json.loads(scene.sinks[2].read_text()) == {"access_token": newer.access_token,
                                                      "expires_at": newer.expires_at_ms}


def test_in_place_write_is_noticed(scene: Scene) -> None:
    write_cred(scene.dirs[0], make_cred(BASE_MS))
    scene.start()
    newer = make_cred(BASE_MS + 1000)
    with open(scene.dirs[1] / ".credentials.json", "w") as fh:  # truncate + write, same inode
        fh.write(json.dumps({"claudeAiOauth": newer.to_json_obj()}))
    wait_for(lambda: scene.everywhere(newer), 5, "in-place write propagated")


def test_guardian_restores_a_cleared_file_within_a_second(scene: Scene) -> None:
    good = make_cred(BASE_MS)
    write_cred(scene.dirs[0], good)
    scene.start()
    wait_for(lambda: scene.everywhere(good), 10, "sync")
    write_doc(scene.dirs[1], {"claudeAiOauth": CLEARED})
    took = wait_for(lambda: scene.file_cred(scene.dirs[1]) == good, 5, "restore")
    assert took < 1.0
    (scene.dirs[2] / ".credentials.json").write_text("{ garbage")
    took = wait_for(lambda: scene.file_cred(scene.dirs[2]) == good, 5, "garbage repaired")
    assert took < 1.5


def test_deliberate_logout_is_respected_and_shown(scene: Scene) -> None:
    good = make_cred(BASE_MS)
    write_cred(scene.dirs[0], good)
    scene.start()
    wait_for(lambda: scene.everywhere(good), 10, "sync")
    (scene.dirs[1] / ".credentials.json").unlink()
    wait_for(lambda: _store_state(scene, scene.dirs[1]) == "logged-out", 5, "logout seen")
    assert not (scene.dirs[1] / ".credentials.json").exists()
    assert scene.file_cred(scene.dirs[0]) == good and scene.keychain_cred() == good


def _store_state(scene: Scene, d: Path) -> str | None:
    out = credsync(["status", "--json", "--config", str(scene.config)], scene.env)
    assert out.returncode == 0, out.stderr
    for row in json.loads(out.stdout)["stores"]:
        if row["name"] == f"file:{d}":
            return str(row["state"])
    return None


WRITER = textwrap.dedent("""
    import json, os, random, sys
    dirs, base = sys.argv[1].split(","), int(sys.argv[2])
    count, seed = int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    for i in range(count):
        d = rng.choice(dirs)
        exp = base + rng.randrange(1, 10**7)
        doc = {"claudeAiOauth": {"accessToken": f"at-{seed}-{i}-{exp}",
                                 "refreshToken": f"rt-{seed}-{i}", "expiresAt": exp}}
        tmp = os.path.join(d, f".tmp-{seed}-{i}")
        with open(tmp, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, os.path.join(d, ".credentials.json"))
        print(exp, flush=True)
""")


def test_four_writers_200_credentials_end_with_every_store_the_freshest(scene: Scene) -> None:
    write_cred(scene.dirs[0], make_cred(BASE_MS))
    scene.start()
    dirs = ",".join(str(d) for d in scene.dirs)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, dirs, str(BASE_MS), "50", str(i)],
                              stdout=subprocess.PIPE, text=True) for i in range(4)]
    written = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        written += [int(x) for x in out.split()]
    assert len(written) == 200
    # The agent never moves a store backwards, so the freshest file now is a lower bound; a
    # credential overwritten by another writer before anyone could read it is gone for all.
    floor = max(c.expires_at_ms for d in scene.dirs if (c := scene.file_cred(d)))

    def settled() -> bool:
        creds = [scene.file_cred(d) for d in scene.dirs]
        return creds[0] is not None and all(c == creds[0] for c in creds)

    try:
        wait_for(settled, 10, "every dir holds the same credential")
    except AssertionError as exc:  # what the agent saw and did, to tell why
        held = [c.fingerprint if (c := scene.file_cred(d)) else None for d in scene.dirs]
        raise AssertionError(f"{exc}; dirs hold {held}; agent log:\n"
                             f"{scene.agent.output()[-3000:] if scene.agent else ''}") from exc
    best = scene.file_cred(scene.dirs[0])
    assert best is not None and best.expires_at_ms >= floor and best.expires_at_ms in written
    wait_for(lambda: scene.everywhere(best), 10, "keychain and sinks hold the freshest")


def test_own_writes_cause_no_write_storm(scene: Scene) -> None:
    write_cred(scene.dirs[0], make_cred(BASE_MS))
    agent = scene.start()
    wait_for(lambda: scene.everywhere(scene.file_cred(scene.dirs[0])), 10, "sync")  # type: ignore[arg-type]
    before = agent.stats(scene.state)
    newer = make_cred(BASE_MS + 5000)
    atomic_cli_write(scene.dirs[0], newer)
    wait_for(lambda: scene.everywhere(newer), 5, "propagated")
    # the last store written is in place: let the agent finish the round that wrote it
    wait_for(lambda: agent.stats(scene.state)["writes"] - before["writes"] >= 8, 5, "writes")
    # A later event round proves that every event the agent's own writes caused was consumed.
    atomic_cli_write(scene.dirs[0], newer)
    wait_for(lambda: agent.stats(scene.state)["rounds"] > before["rounds"] + 1, 5, "next round")
    after = agent.stats(scene.state)
    # two dirs, the keychain and five sinks: one write each, and nothing more
    assert after["writes"] - before["writes"] == 8
    assert after["rounds"] - before["rounds"] <= 3


def test_config_dir_created_later_and_recreated_is_watched(scene: Scene, tmp_path: Path) -> None:
    late = tmp_path / "late" / "cfg"
    config = write_config(tmp_path / "late.toml", [scene.dirs[0], late], scene.state,
                          keychain=False)
    write_cred(scene.dirs[0], make_cred(BASE_MS))
    agent = AgentProcess(config, scene.env)
    scene.agent = agent
    agent.wait_started(scene.state)
    late.mkdir(parents=True)
    wait_for(lambda: scene.file_cred(late) == scene.file_cred(scene.dirs[0]), 5, "late dir")
    newer = make_cred(BASE_MS + 1000)
    import shutil

    shutil.rmtree(late)
    late.mkdir()
    atomic_cli_write(late, newer)
    wait_for(lambda: scene.file_cred(scene.dirs[0]) == newer, 5, "write in the re-created dir")


def test_sigterm_stops_within_two_seconds_leaving_no_partial_file(scene: Scene) -> None:
    write_cred(scene.dirs[0], make_cred(BASE_MS))
    agent = scene.start()
    assert agent.stop() < 2.0
    assert agent.proc.returncode == 0
    leftovers = [p for p in scene.root.rglob("*.tmp")]
    assert leftovers == []
    scene.agent = None


def test_a_second_agent_names_the_first_and_exits(scene: Scene) -> None:
    agent = scene.start()
    out = credsync(["run", "--config", str(scene.config)], scene.env, timeout=20)
    assert out.returncode == 1
    assert f"pid {agent.proc.pid}" in out.stderr
    assert "Traceback" not in out.stderr


def test_status_json_with_and_without_the_agent(scene: Scene) -> None:
    good = make_cred(BASE_MS)
    write_cred(scene.dirs[0], good)
    out = credsync(["status", "--json", "--config", str(scene.config)], scene.env)
    status = json.loads(out.stdout)
    assert status["agent"] == {"running": False, "pid": None, "state": "not running",
                               "state_dir": str(Ledger(scene.state, scene.dirs).path)}
    states = {r["name"]: r["state"] for r in status["stores"]}
    assert states[f"file:{scene.dirs[0]}"] == "in-sync"
    assert states[f"file:{scene.dirs[1]}"] == "missing"
    agent = scene.start()
    wait_for(lambda: scene.everywhere(good), 10, "sync")
    status = json.loads(credsync(["status", "--json", "--config", str(scene.config)],
                                 scene.env).stdout)
    assert status["agent"]["running"] is True and status["agent"]["pid"] == agent.proc.pid
    for row in status["stores"]:
        assert {"name", "kind", "state", "fingerprint", "expires_at"} <= row.keys()
        assert row["state"] == "in-sync", row
        assert row["fingerprint"] == good.fingerprint
    text = credsync(["status", "--config", str(scene.config)], scene.env).stdout
    assert f"running (pid {agent.proc.pid})" in text
    for out_text in (text, json.dumps(status), agent.output(),
                     (scene.root / "log" / "credsync.log").read_text()):
        assert good.access_token not in out_text and good.refresh_token not in out_text


def test_unavailable_keychain_is_reported_and_the_agent_keeps_running(scene: Scene) -> None:
    good = make_cred(BASE_MS)
    write_cred(scene.dirs[0], good)
    scene.keyring.stop_daemon()
    agent = scene.start()
    wait_for(lambda: all(scene.file_cred(d) == good for d in scene.dirs), 10, "files synced")
    row = next(r for r in json.loads(credsync(
        ["status", "--json", "--config", str(scene.config)], scene.env).stdout)["stores"]
        if r["kind"] == "keychain")
    assert row["state"] == "error" and row["detail"]
    assert agent.proc.poll() is None
    scene.keyring.start_daemon()
    # the agent's audit round re-reads the keychain; a write elsewhere triggers one now
    newer = make_cred(BASE_MS + 1000)
    atomic_cli_write(scene.dirs[0], newer)
    wait_for(lambda: scene.keychain_cred() == newer, 10, "keychain back in step")
