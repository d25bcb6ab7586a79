"""``credsync cluster ...`` end to end: real processes, two HOMEs, one real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cluster.admin import ClusterAdmin
from agent.config import load_settings
from tests.agentproc import credsync, wait_for, write_config
from tests.clusterkit import cred, raw_redis
from tests.redisproc import RedisServer, running

pytestmark = pytest.mark.integration


@dataclass
class Machine:
    home: Path
    config: Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CREDSYNC_", "DBUS_", "CLAUDE_"))}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
                   XDG_STATE_HOME=str(self.home / ".local/state"),
                   XDG_CACHE_HOME=str(self.home / ".cache"))
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return credsync(["cluster", *args, "--config", str(self.config)], env=self.env)

    def status(self) -> dict[str, object]:
        done = self.run("status", "--json")
        assert done.returncode == 0, done.stderr
        report: dict[str, object] = json.loads(done.stdout)
        return report

    def admin(self) -> ClusterAdmin:
        settings, _ = load_settings(self.config)
        return ClusterAdmin(settings)


def machine(root: Path, name: str, cluster: dict[str, object] | None = None) -> Machine:
    home = root / name
    (home / ".claude").mkdir(parents=True)
    config = write_config(home / "config.toml", [home / ".claude"], home / "state",
                          keychain=False)
    if cluster:
        with config.open("a") as f:
            f.write("\n[cluster]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                              for k, v in cluster.items()))
    return Machine(home, config)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with running(tmp_path / "redis") as found:
        yield found


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *says: str) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("credsync: "), done.stderr
    assert "Traceback" not in done.stderr
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_init_invite_join_status_leave_with_two_homes(tmp_path: Path,
                                                      server: RedisServer) -> None:
    a, b, c = (machine(tmp_path, n) for n in ("a", "b", "c"))
    done = a.run("init", "--redis", server.url)
    assert done.returncode == 0, done.stderr
    mine = a.status()
    assert mine["member"] and mine["reachable"] and len(mine["members"]) == 1  # type: ignore
    again = a.run("init", "--redis", server.url)
    one_line_error(again, 1, "already in cluster", "cluster leave")

    invited = a.run("invite")
    assert invited.returncode == 0, invited.stderr
    code = last_line(invited.stdout)
    assert code.startswith("CS1-") and len(code) == 46
    joined = b.run("join", code, "--redis", server.url)
    assert joined.returncode == 0, joined.stderr
    one_line_error(c.run("join", code, "--redis", server.url), 1, "used, or expired")

    theirs = b.status()
    assert theirs["login_id"] == mine["login_id"] and theirs["kid"] == mine["kid"]
    ids = {m["member_id"] for m in theirs["members"]}  # type: ignore
    assert ids == {mine["member_id"], theirs["member_id"]} and len(ids) == 2

    # A state published by a's agent reaches b's view; no token is ever printed.
    admin = a.admin()
    client = admin.open_client()
    assert client is not None
    login = cred("cli")
    client.publish(login, 1, 0, 0)
    client.close()
    text = b.run("status")
    js = b.run("status", "--json")
    for out in (text.stdout, js.stdout, text.stderr, js.stderr):
        assert login.access_token not in out and login.refresh_token not in out
    assert f"gen 1 {login.fingerprint}" in text.stdout and "members:" in text.stdout
    assert "clock offset" in text.stdout

    left = b.run("leave")
    assert left.returncode == 0 and "left cluster" in left.stdout
    assert b.status() == {"member": False}
    assert b.run("status").stdout.strip() == "cluster: none (single machine)"
    assert len(a.status()["members"]) == 1  # type: ignore
    assert b.run("leave").stdout.strip() == "this login is in no cluster; nothing to do"
    state = b.home / "state"
    assert not list(state.rglob("cluster*"))  # key, membership, view and gossip all gone


def test_membership_is_recorded_in_the_state_dir_and_the_key_is_private(
        tmp_path: Path, server: RedisServer) -> None:
    a = machine(tmp_path, "a")
    assert a.run("init", "--redis", server.url).returncode == 0
    (membership,) = (a.home / "state").rglob("cluster.json")
    (key,) = (a.home / "state").rglob("cluster.key")
    assert key.stat().st_mode & 0o777 == 0o600 and membership.stat().st_mode & 0o777 == 0o600
    recorded = json.loads(membership.read_text())
    assert recorded["redis_url"] == server.url and recorded["key_store"] == "file"
    assert "[cluster]" not in a.config.read_text()  # credsync never rewrites config.toml
    assert bytes.fromhex(key.read_text().strip()) not in _dump(server)


def _dump(server: RedisServer) -> bytes:
    with raw_redis(server.port) as r:
        return b"".join(k + (r.get(k) or b"") if r.type(k) == b"string" else k
                        for k in r.scan_iter())


def test_an_expired_invitation_is_refused(tmp_path: Path, server: RedisServer) -> None:
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    assert a.run("init", "--redis", server.url).returncode == 0
    code = last_line(a.run("invite").stdout)
    with raw_redis(server.port) as r:
        (key,) = list(r.scan_iter(match="cs:*:invite:*"))
        assert 595_000 < r.pttl(key) <= 600_000  # 10 minutes, on Redis' clock
        r.pexpire(key, 1)  # the 10 minutes pass (Redis expires it, not credsync)
        wait_for(lambda: not r.exists(key), 2, "the invitation to expire")
    one_line_error(b.run("join", code, "--redis", server.url), 1, "expired",
                   "credsync cluster invite")


@pytest.mark.parametrize(("args", "says"), [
    (["init", "--redis", "redis://10.1.2.3:6379/0"], "--redis: redis:// sends"),
    (["init", "--redis", "rediss://u:pw@h.example/0"], "--redis: the URL holds a password"),
    (["join", "CS1-NOTACODE", "--redis", "redis://127.0.0.1:1/0"], "CODE: "),
    (["join", "hello", "--redis", "redis://127.0.0.1:1/0"], "CODE: not a credsync join code"),
])
def test_bad_input_is_one_line_naming_the_field_exit_2(tmp_path: Path, args: list[str],
                                                       says: str) -> None:
    line = one_line_error(machine(tmp_path, "a").run(*args), 2, says)
    assert "pw@" not in line


def test_commands_without_membership_or_redis_say_what_to_do(tmp_path: Path,
                                                             server: RedisServer) -> None:
    a = machine(tmp_path, "a")
    one_line_error(a.run("invite"), 1, "in no cluster", "cluster init")
    one_line_error(a.run("init", "--redis", "redis://127.0.0.1:1/0"), 1, "cannot reach Redis")
    assert a.run("init", "--redis", server.url).returncode == 0
    server.stop()
    report = a.status()
    assert report["reachable"] is False and "cannot reach Redis" in str(report["error"])
    assert "unreachable" in a.run("status").stdout
    left = a.run("leave")  # still leaves: the key and the records go
    assert left.returncode == 0 and "could not be told" in left.stderr


def test_the_password_comes_from_a_0600_file_never_the_config(tmp_path: Path) -> None:
    secret = "pw-" + os.urandom(8).hex()
    password_file = tmp_path / "redis.pass"
    password_file.write_text(secret + "\n")
    os.chmod(password_file, 0o644)
    with running(tmp_path / "redis", password=secret) as server:
        bare = machine(tmp_path, "bare")
        one_line_error(bare.run("init", "--redis", server.url), 1, "refused the login",
                       "password_file")
        a = machine(tmp_path, "a", {"password_file": str(password_file)})
        line = one_line_error(a.run("init", "--redis", server.url), 1,
                              "cluster.password_file", f"chmod 600 {password_file}")
        assert secret not in line
        os.chmod(password_file, 0o600)
        done = a.run("init", "--redis", server.url)
        assert done.returncode == 0, done.stderr
        assert a.status()["reachable"] is True
        for path in (a.home / "state").rglob("*"):
            if path.is_file():
                assert secret not in path.read_text(errors="replace")


def test_the_agent_side_is_built_from_the_settings(tmp_path: Path, server: RedisServer) -> None:
    """What the lead wires into the loop: open_client() (None without a cluster) and a
    subscriber on its own links, putting events on the loop's queue."""
    import queue

    from agent.cluster.state import Resubscribed, StatePublished
    from tests.clusterkit import wait_event

    a = machine(tmp_path, "a")
    solo = a.admin()
    assert solo.open_client() is None  # single-machine behaviour: nothing to build
    assert a.run("init", "--redis", server.url).returncode == 0
    admin = a.admin()
    client = admin.open_client()
    assert client is not None
    events: queue.Queue[object] = queue.Queue()
    subscriber = admin.subscriber(client, events)
    subscriber.start()
    try:
        first = wait_event(events, Resubscribed)
        assert first.snapshot.epoch == client.view.epoch and first.snapshot.payload is None
        client.publish(cred(), 1, 0, 0)
        assert wait_event(events, StatePublished).snapshot.gen == 1
    finally:
        subscriber.stop()
        client.close()
        admin.close()
    assert not subscriber.alive


def test_a_least_privilege_acl_user_is_enough(tmp_path: Path, server: RedisServer) -> None:
    """The README's ACL: every cluster command works; keys outside cs:* are refused."""
    import redis

    secret = "acl-" + os.urandom(8).hex()
    with raw_redis(server.port) as r:
        r.execute_command(
            "ACL", "SETUSER", "cs", "on", f">{secret}", "resetkeys", "~cs:*", "resetchannels",
            "&cs:*", "-@all", "+@read", "+@write", "+@pubsub", "+@scripting", "+@connection",
            "+@transaction", "-@dangerous", "+time", "+ping")
        r.set("other-app:secret", "x")
    password_file = tmp_path / "cs.pass"
    password_file.write_text(secret)
    os.chmod(password_file, 0o600)
    url = f"redis://cs@127.0.0.1:{server.port}/0"
    a = machine(tmp_path, "a", {"password_file": str(password_file)})
    b = machine(tmp_path, "b", {"password_file": str(password_file)})
    assert a.run("init", "--redis", url).returncode == 0
    code = last_line(a.run("invite").stdout)
    done = b.run("join", code, "--redis", url)
    assert done.returncode == 0, done.stderr
    assert len(b.status()["members"]) == 2  # type: ignore
    with redis.Redis(port=server.port, username="cs", password=secret) as limited, \
            pytest.raises(redis.exceptions.NoPermissionError):
        limited.get("other-app:secret")
