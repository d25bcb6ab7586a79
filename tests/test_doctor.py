"""``credsync doctor``: the machine put into each state a check covers, and the line, the fix and
the exit code asserted; no token in any output. Real processes (``credsync doctor``, ``credsync
run``), a real TLS server on 127.0.0.1, a real gnome-keyring and D-Bus where a check needs them.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.credential import Credential
from tests.agentproc import AgentProcess, credsync, wait_for, write_config
from tests.factories import make_cred, write_cred, write_doc
from tests.realdesktop import (
    Session,
    bus_without_server_fixture,  # noqa: F401
)
from tests.realkeyring import (
    RealKeyring,
    real_keyring_fixture,  # noqa: F401
)
from tests.test_cluster_tls import make_pki

pytestmark = pytest.mark.integration

HOUR_MS = 3600 * 1000


# --- a TLS token endpoint on 127.0.0.1 that records what reaches it ---------------------------

class Endpoint:
    def __init__(self, root: Path) -> None:
        self.ca, chain, key = make_pki(root / "pki", ["localhost"])
        self.requests: list[dict[str, Any]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                seen.append({"method": self.command, "path": self.path,
                             "headers": dict(self.headers.items()),
                             "body": self.rfile.read(length) if length else b""})
                self.send_response(405)
                self.send_header("content-length", "0")
                self.end_headers()

            do_HEAD = do_GET = do_POST = do_OPTIONS = _answer

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/v1/oauth/token"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(name="endpoint")
def endpoint_fixture(tmp_path: Path) -> Iterator[Endpoint]:
    server = Endpoint(tmp_path)
    try:
        yield server
    finally:
        server.close()


# --- a machine of its own: HOME, config dirs, config file -------------------------------------

class Machine:
    def __init__(self, root: Path, endpoint: Endpoint | None, *, keychain: bool = False,
                 notify: dict[str, Any] | None = None, base: dict[str, str] | None = None,
                 ndirs: int = 2) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(mode=0o700, parents=True)
        self.dirs = [self.home / ".claude", *(self.home / f"w{i}" / ".claude"
                                              for i in range(1, ndirs))]
        for d in self.dirs:
            d.mkdir(parents=True, mode=0o700)
        self.state = root / "state"
        refresh: dict[str, Any] = {"token_url": endpoint.url} if endpoint else {"enabled": False}
        self.config = write_config(root / "config.toml", self.dirs, self.state,
                                   keychain=keychain, log_file=root / "log" / "credsync.log",
                                   refresh=refresh,
                                   notify=notify or {"desktop": False,
                                                     "command": ["/bin/true"]})
        env = dict(base if base is not None else os.environ)
        for name in ("CLAUDE_SECURESTORAGE_CONFIG_DIR", "CREDSYNC_CONFIG"):
            env.pop(name, None)
        if base is None:
            env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
                   XDG_STATE_HOME=str(self.home / ".state"),
                   XDG_CACHE_HOME=str(self.home / ".cache"),
                   CLAUDE_CONFIG_DIR=str(self.dirs[0]))
        if endpoint is not None:
            env["SSL_CERT_FILE"] = str(endpoint.ca)  # the probe trusts the test CA, as httpx does
        self.env = env
        self.secrets: list[str] = []

    def login(self, cred: Credential, where: list[int] | None = None, **other: Any) -> None:
        self.secrets += [cred.access_token, cred.refresh_token]
        for i in where if where is not None else range(len(self.dirs)):
            write_cred(self.dirs[i], cred, **other)
            (self.dirs[i] / ".credentials.json").chmod(0o600)  # as the CLI writes it

    def doctor(self, *extra: str) -> subprocess.CompletedProcess[str]:
        out = credsync(["doctor", "--config", str(self.config), *extra], self.env, timeout=90)
        for secret in self.secrets:
            assert secret not in out.stdout and secret not in out.stderr, "a token was printed"
        assert "Traceback" not in out.stderr, out.stderr
        return out

    def agent(self) -> AgentProcess:
        agent = AgentProcess(self.config, self.env)
        agent.wait_started(self.state)
        return agent


def line(out: subprocess.CompletedProcess[str], start: str) -> str:
    found = [x for x in out.stdout.splitlines() if x.startswith(start)]
    assert len(found) == 1, f"no single line starting {start!r} in:\n{out.stdout}"
    return found[0]


def levels(out: subprocess.CompletedProcess[str]) -> dict[str, int]:
    data = json.loads(out.stdout)
    return {k: data[k] for k in ("ok", "warn", "fail")}


def fresh(tag: str = "") -> Credential:
    return make_cred(int(time.time() * 1000) + 8 * HOUR_MS, tag)


# --- healthy ------------------------------------------------------------------------------------

def test_a_healthy_setup_is_all_ok_but_the_login_item_and_exits_0(
        tmp_path: Path, endpoint: Endpoint) -> None:
    m = Machine(tmp_path, endpoint)
    m.login(fresh())
    agent = m.agent()
    try:
        out = m.doctor()
        data = json.loads(m.doctor("--json").stdout)
    finally:
        agent.stop()
    assert out.returncode == 0, out.stdout
    assert line(out, "ok    login:").startswith("ok    login: ok, ")
    assert line(out, f"ok    login in {m.dirs[1]}:").endswith(")")
    assert line(out, "ok    agent:") == f"ok    agent: running (pid {agent.proc.pid}), its last " \
        "round is recent"
    assert line(out, "ok    token endpoint:") == (
        f"ok    token endpoint: {endpoint.url} reachable over TLS (HTTP 405; no token sent)")
    assert line(out, "ok    clock:").startswith("ok    clock: in step with the token server")
    assert line(out, f"ok    lock {m.dirs[0]}/.oauth_refresh.lock:").endswith(
        f"held by credsync (pid {agent.proc.pid}), which keeps the sessions from racing")
    assert line(out, "ok    environment:").startswith(f"ok    environment: CLAUDE_CONFIG_DIR="
                                                      f"{m.dirs[0]}: sessions here use")
    # Everything else ok: only the login item (not installed in this HOME) warns.
    bad = [x for x in out.stdout.splitlines()[:-1] if not x.startswith("ok")]
    assert bad == ["warn  login item: not installed: the agent does not start at login  fix: "
                   f"`credsync install --config {m.config}`"]
    assert data["fail"] == 0 and data["exit"] == 0
    assert {c["name"] for c in data["checks"]} >= {
        "config", "login", "one login", "agent", "token endpoint", "clock", "environment",
        "notifications", "notify command", "notify webhook", "login item", "keychain"}
    # No token, no refresh body: the probe is a bare HEAD.
    assert endpoint.requests and {r["method"] for r in endpoint.requests} == {"HEAD"}
    assert all(r["body"] == b"" and "authorization" not in {k.lower() for k in r["headers"]}
               for r in endpoint.requests)


# --- each failing state --------------------------------------------------------------------------

def test_a_missing_login_fails_with_the_login_command(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    out = m.doctor()
    assert out.returncode == 1
    assert line(out, "fail  login:") == ("fail  login: none: no login in any config dir  fix: "
                                         "log in: `claude auth login` (or `claude`, then /login)")


def test_a_missing_login_in_one_dir_warns_and_names_the_agent(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    m.login(fresh(), where=[0])
    out = m.doctor()
    assert line(out, f"warn  login in {m.dirs[1]}:") == (
        f"warn  login in {m.dirs[1]}: missing: does not hold the current login (no credentials "
        "file)  fix: start the agent (`credsync run`, or `credsync install`): it copies the "
        "login there")


def test_a_stale_lock_dir_warns_with_rmdir_and_a_future_one_fails(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    m.login(fresh())
    stale = m.dirs[0] / ".oauth_refresh.lock"
    stale.mkdir()
    os.utime(stale, (time.time() - 600, time.time() - 600))
    ahead = m.dirs[1] / ".storage-write.lock"
    ahead.mkdir()
    os.utime(ahead, (time.time() + 30 * 86400, time.time() + 30 * 86400))
    agent = m.agent()  # refresh is off here: the agent holds no CLI lock of its own
    try:
        out = m.doctor()
        assert line(out, f"warn  lock {stale}:") == (
            f"warn  lock {stale}: stale: not touched for 10 min, its holder died or hangs (the "
            f"CLI takes it over after 60 s)  fix: rmdir {stale}")
        assert line(out, f"fail  lock {ahead}:").endswith(
            f"no live credsync holds it: the CLI never takes it over  fix: rmdir {ahead}")
        assert out.returncode == 1
        ahead.rmdir()
        again = m.doctor()
        assert again.returncode == 0, again.stdout  # a stale lock alone is a warning
        assert line(again, f"warn  lock {stale}:")
        stale.rmdir()
        assert line(m.doctor(), f"ok    locks in {m.dirs[0]}:") == \
            f"ok    locks in {m.dirs[0]}: none held"
    finally:
        agent.stop()


def test_a_world_writable_config_fails_with_chmod_and_nothing_else_is_guessed(
        tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    m.login(fresh())
    m.config.chmod(0o666)
    out = m.doctor()
    assert out.returncode == 1
    assert line(out, "fail  config:") == (
        f"fail  config: {m.config}: the config file is writable by group or others, and it "
        "chooses the token URL, the sinks and notify.command  fix: chmod go-w " f"{m.config}")
    assert "login:" not in out.stdout  # the dirs come from the config: not guessed
    m.config.chmod(0o600)
    assert line(m.doctor(), "ok    config:") == f"ok    config: {m.config}: valid"


def test_a_stopped_agent_fails_with_kill_cont(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    m.login(fresh())
    agent = m.agent()
    pid = agent.proc.pid
    try:
        assert m.doctor().returncode == 0
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: _proc_state(pid) in ("T", "t"), 5, "the agent stopped")
        out = m.doctor()
        assert out.returncode == 1
        assert line(out, "fail  agent:") == (
            f"fail  agent: pid {pid} is stopped (SIGSTOP or a debugger): it holds the locks and "
            f"does nothing  fix: kill -CONT {pid}")
    finally:
        os.kill(pid, signal.SIGCONT)
        agent.stop()
    out = m.doctor()
    assert line(out, "fail  agent:").startswith("fail  agent: not running")
    assert line(out, "fail  agent:").endswith(f"fix: `credsync install --config {m.config}` "
                                              "(or `credsync run` in a terminal)")


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_an_unreachable_notification_server_fails_when_nothing_else_is_set(
        tmp_path: Path, bus_without_server: Session) -> None:
    m = Machine(tmp_path, None, notify={"desktop": True},
                base=dict(os.environ))  # the fixture's bus, with no notification server on it
    m.login(fresh())
    out = m.doctor()
    assert out.returncode == 1
    assert line(out, "fail  notifications:") == (
        "fail  notifications: no notification server (no org.freedesktop.Notifications on the "
        "session bus): alerts go to [notify] command or webhook only  fix: start a notification "
        "daemon (your desktop's, or dunst), or set [notify] command or webhook")
    with_hook = Machine(tmp_path / "b", None, notify={"desktop": True, "command": ["/bin/true"]},
                        base=dict(os.environ))
    with_hook.login(fresh())
    assert line(with_hook.doctor(), "warn  notifications:")  # a fallback exists: a warning


def test_a_notify_command_that_does_not_exist_fails(tmp_path: Path) -> None:
    m = Machine(tmp_path, None, notify={"desktop": False, "command": ["no-such-notifier-x"]})
    m.login(fresh())
    out = m.doctor()
    assert line(out, "fail  notify command:") == (
        "fail  notify command: no-such-notifier-x is not found or not executable  fix: fix "
        "[notify] command in the config: the first word must be a program on PATH or an "
        "absolute path")


def test_a_locked_keychain_fails_with_how_to_unlock_it(tmp_path: Path,
                                                        real_keyring: RealKeyring) -> None:
    m = Machine(tmp_path, None, keychain=True, base=dict(real_keyring.env))
    m.login(fresh())
    agent = m.agent()
    try:
        wait_for(lambda: m.doctor().returncode == 0, 20, "doctor all well with the keychain")
        assert line(m.doctor(), "ok    keychain:") == (
            "ok    keychain: SecretServiceKeyring: reachable and unlocked")
        real_keyring.lock()
        out = m.doctor()
    finally:
        agent.stop()
    assert out.returncode == 1
    keychain = line(out, "fail  keychain:")
    assert keychain.startswith("fail  keychain: SecretServiceKeyring: ") and "lock" in keychain
    assert keychain.endswith("fix: unlock the login keyring (log in to the desktop, or open "
                             "Passwords and Keys and unlock it), or set [claude] keychain = false")


def test_a_token_endpoint_that_does_not_answer_fails_and_one_without_tls_warns(
        tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    m = Machine(tmp_path, None)
    write_config(m.config, m.dirs, m.state, keychain=False,
                 refresh={"token_url": f"https://127.0.0.1:{port}/token"},
                 notify={"desktop": False, "command": ["/bin/true"]})
    m.login(fresh())
    out = m.doctor()
    assert line(out, "fail  token endpoint:").startswith(
        f"fail  token endpoint: https://127.0.0.1:{port}/token unreachable: ConnectError")
    assert out.returncode == 1


def test_an_untrusted_certificate_fails(tmp_path: Path, endpoint: Endpoint) -> None:
    m = Machine(tmp_path, endpoint)
    m.env.pop("SSL_CERT_FILE")  # the test CA is not trusted now
    m.login(fresh())
    out = m.doctor()
    assert "the TLS certificate was refused" in line(out, "fail  token endpoint:")
    assert endpoint.requests == []  # nothing got through the handshake


def test_a_config_dir_variable_credsync_does_not_keep_fails(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    m.login(fresh())
    other = tmp_path / "elsewhere"
    m.env["CLAUDE_CONFIG_DIR"] = str(other)
    out = m.doctor()
    assert line(out, "fail  environment:") == (
        f"fail  environment: CLAUDE_CONFIG_DIR={other}: sessions here use {other}, which "
        f"credsync does not keep  fix: set [claude] config_dirs = [\"{m.dirs[0]}\", "
        f"\"{m.dirs[1]}\", \"{other}\"] in {m.config} (or run from a shell without the "
        "variable)")


def test_a_world_readable_credential_file_warns_and_a_symlink_is_shown(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    m.login(fresh())
    path = m.dirs[0] / ".credentials.json"
    path.chmod(0o644)
    real = tmp_path / "real.json"
    target = m.dirs[1] / ".credentials.json"
    real.write_bytes(target.read_bytes())
    real.chmod(0o600)
    target.unlink()
    target.symlink_to(real)
    out = m.doctor()
    assert line(out, f"warn  file {path}:") == (
        f"warn  file {path}: readable by group or others (mode 644)  fix: chmod 600 {path}")
    assert line(out, f"ok    file {target}:") == (
        f"ok    file {target}: yours, private (a symlink to {real})")


def test_two_different_logins_across_the_dirs_warn(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    m.login(fresh("a"), where=[0])
    m.login(make_cred(int(time.time() * 1000) + 4 * HOUR_MS, "b"), where=[1])
    out = m.doctor()
    assert line(out, "warn  one login:").startswith(
        f"warn  one login: 2 different logins across the config dirs (behind: file:{m.dirs[1]})")


def test_mcp_entries_are_reported_per_dir_never_copied_and_never_printed(
        tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    cred = fresh()
    future = int(time.time() * 1000) + HOUR_MS
    good = {"serverName": "github", "serverUrl": "https://mcp.example/", "accessToken":
            "mcp-access-secret-1234567890", "refreshToken": "mcp-refresh-secret-0987654321",
            "expiresAt": future, "clientId": "c"}
    cleared = {"serverName": "github", "serverUrl": "https://mcp.example/", "accessToken": "",
               "expiresAt": 0, "clientId": "c"}
    stub = {"serverName": "linear", "accessToken": ""}
    m.secrets += [good["accessToken"], good["refreshToken"]]
    m.login(cred, where=[0], mcpOAuth={"github|1": good, "linear|2": stub})
    m.login(cred, where=[1], mcpOAuth={"github|1": cleared})
    before = [(d / ".credentials.json").read_bytes() for d in m.dirs]
    agent = m.agent()
    try:
        out = m.doctor()
        status = credsync(["status", "--json", "--config", str(m.config)], m.env)
        text = credsync(["status", "--config", str(m.config)], m.env).stdout
    finally:
        agent.stop()
    assert line(out, "warn  mcp github:") == (
        f"warn  mcp github: {m.dirs[0]}: valid; {m.dirs[1]}: cleared  fix: sign in to it again "
        f"with /mcp in a Claude Code session of {m.dirs[1]}; credsync never copies MCP tokens "
        "between dirs")
    assert line(out, "ok    mcp linear:").startswith(
        f"ok    mcp linear: {m.dirs[0]}: signing-in; {m.dirs[1]}: missing")
    entries = {k["server"]: [d["state"] for d in k["dirs"]]
               for k in json.loads(status.stdout)["mcp"]}
    assert entries == {"github": ["valid", "cleared"], "linear": ["signing-in", "missing"]}
    assert f"next step: mcp github in {m.dirs[1]} is cleared" in text
    for secret in m.secrets:
        assert secret not in status.stdout and secret not in text
    # The agent kept the login in step and left every MCP entry as it was.
    after = [json.loads((d / ".credentials.json").read_text())["mcpOAuth"] for d in m.dirs]
    assert after == [json.loads(b)["mcpOAuth"] for b in before]


def test_an_expired_login_and_a_cleared_dir_are_reported_without_tokens(tmp_path: Path) -> None:
    m = Machine(tmp_path, None)
    old = make_cred(int(time.time() * 1000) - HOUR_MS, "old")
    m.login(old, where=[0])
    write_doc(m.dirs[1], {"claudeAiOauth": {"accessToken": "", "refreshToken": "",
                                            "expiresAt": 0}})
    out = m.doctor("--json")
    assert out.returncode == 1
    login = next(c for c in json.loads(out.stdout)["checks"] if c["name"] == "login")
    assert login["level"] == "fail" and login["summary"].startswith("expired")
    assert login["fix"] == "`credsync refresh` (or start the agent: `credsync run`)"
