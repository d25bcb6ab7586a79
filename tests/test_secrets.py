"""No token ever leaks: the integration scenarios at debug log level, then every file scanned.

One world (real ``credsync run`` at debug level with a log file, the real Secret Service keychain,
the simulated OAuth server, sinks of every format, a notify command that records every notice
with its whole environment) goes through propagation, guardian restores, refreshes by the agent
and by ``credsync refresh``, a lost response, an invalid_grant, a recovery, ``credsync status``
(text and JSON), ``credsync token`` and config errors. Every token the server ever issued (lost
rotations included) is then looked for in every output and in every file under the test's roots:
it may only be in the stores (credential files, sinks, the keychain's own files) and the state
dir's ``last-good.json`` (a copy of the credential by design, 0600).

In-process checks cover exception texts (refresher failures, store refusals) and the alert
policy's notices built from inputs that carry tokens.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.clock import FakeClock
from agent.config import NotifySection
from agent.credential import Credential, fingerprint_of, parse_document
from agent.errors import CredsyncError, StoreError
from agent.ledger import scope_dir
from agent.notify.alerts import AlertPolicy, AuthObservation
from agent.refresh.http import HttpRefresher
from agent.sim.server import OAuthServer
from agent.stores.keychain import OWN_SERVICE, own_account
from agent.stores.sink import SinkStore
from tests.agentproc import REPO, AgentProcess, credsync, wait_for, write_config
from tests.factories import CLEARED, write_doc
from tests.realkeyring import RealKeyring, real_keyring  # noqa: F401

pytestmark = pytest.mark.integration

FORMATS = ("claude", "access-token", "env", "json")
LIFETIME_S = 8  # the agent refreshes at half of it
NOTICE_SCRIPT = ("import json, os, sys\n"
                 "with open(sys.argv[1], 'a') as fh:\n"
                 "    fh.write(json.dumps(dict(os.environ)) + '\\n')\n")


def issued_tokens(server: OAuthServer) -> set[str]:
    """Every access and refresh token the sim ever issued, lost rotations included.

    Test-only introspection of the sim's ledger: its public API shows fingerprints only.
    """
    with server._lock:
        return {t for family in server._ledger._families for t in family.tokens}


def found_in(text: str | bytes, tokens: Iterable[str]) -> list[str]:
    """Fingerprints (never the tokens: test output is a log too) of the tokens in ``text``."""
    data = text.encode(errors="surrogatepass") if isinstance(text, str) else text
    return sorted(fingerprint_of(t) for t in tokens if t and t.encode() in data)


def regular_files(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):  # symlinks are not followed
        for name in names:
            path = Path(dirpath) / name
            if stat.S_ISREG(path.lstat().st_mode):
                yield path


@dataclass
class World:
    root: Path
    server: OAuthServer
    keyring: RealKeyring
    dirs: list[Path]
    sinks: list[Path]
    state: Path
    log: Path
    notices: Path
    config: Path
    outputs: dict[str, str] = field(default_factory=dict)  # every CLI output, by name
    agent: AgentProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in self.keyring.env.items() if not k.startswith("CREDSYNC_")}

    def cli(self, name: str, *args: str, config: Path | None = None) -> tuple[int, str, str]:
        out = credsync([*args, "--config", str(config or self.config)], env=self.env)
        self.outputs[f"{name}: stdout"] = out.stdout
        self.outputs[f"{name}: stderr"] = out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        return out.returncode, out.stdout, out.stderr

    def file_cred(self, d: Path) -> Credential | None:
        try:
            return parse_document((d / ".credentials.json").read_bytes())[0].valid
        except FileNotFoundError:
            return None

    def keychain_cred(self) -> Credential | None:
        raw = self.keyring.lookup(OWN_SERVICE, own_account(self.dirs))
        return parse_document(raw.encode())[0].valid if raw else None

    def everywhere(self, cred: Credential) -> bool:
        return (all(self.file_cred(d) == cred for d in self.dirs)
                and all(p.exists() and cred.access_token in p.read_text() for p in self.sinks)
                and self.keychain_cred() == cred)

    def in_step(self) -> bool:
        """Every store holds the same login (whichever it is now)."""
        cred = self.file_cred(self.dirs[0])
        return cred is not None and self.everywhere(cred)

    def current(self) -> Credential:
        cred = self.file_cred(self.dirs[0])
        assert cred is not None
        return cred

    def login(self, where: Path) -> Credential:
        """A new login (a new token family), written as the CLI would."""
        oauth = self.server.issue_login()
        write_doc(where, {"claudeAiOauth": oauth})
        cred = parse_document(json.dumps({"claudeAiOauth": oauth}).encode())[0].valid
        assert cred is not None
        return cred

    def notice_events(self) -> list[str]:
        if not self.notices.exists():
            return []
        return [json.loads(line)["CREDSYNC_EVENT"]
                for line in self.notices.read_text().splitlines() if line]

    def auth_state(self) -> str:
        try:
            obj = json.loads((scope_dir(self.state) / "agent.json").read_text())
        except (OSError, ValueError):
            return ""
        return str(obj.get("login") or "")


@pytest.fixture
def world(tmp_path: Path, real_keyring: RealKeyring) -> Iterator[World]:  # noqa: F811
    dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
    for d in dirs:
        d.mkdir()
    sinks = [tmp_path / "sessions" / f"s-{fmt}" / "token" for fmt in FORMATS]
    state, log = tmp_path / "state", tmp_path / "log" / "credsync.log"
    notices = tmp_path / "notices" / "received.jsonl"
    notices.parent.mkdir()
    script = tmp_path / "notify.py"
    script.write_text(NOTICE_SCRIPT)
    with OAuthServer(access_lifetime_s=LIFETIME_S) as server:
        config = write_config(
            tmp_path / "config.toml", dirs, state, keychain=True, log_level="debug",
            log_file=log,
            sinks=[{"path": p, "format": f} for p, f in zip(sinks, FORMATS, strict=True)],
            refresh={"token_url": server.url, "jitter": 0, "at_fraction": 0.5,
                     "client_window_s": 0, "margin_s": 0, "nominal_lifetime_s": LIFETIME_S},
            notify={"desktop": False, "command": [sys.executable, str(script), str(notices)],
                    "notify_on_restore": True})
        w = World(tmp_path, server, real_keyring, dirs, sinks, state, log, notices, config)
        yield w
        if w.agent is not None:
            w.agent.kill()


def run_scenarios(w: World) -> None:
    """Short lifetimes from the start: the agent refreshes every few seconds throughout, so the
    waits below ask for "every store in step" rather than for one particular credential."""
    # Propagation: a login in one dir reaches every store.
    w.login(w.dirs[0])
    w.agent = AgentProcess(w.config, w.env)
    w.agent.wait_started(w.state)
    wait_for(w.in_step, 15, "the first login everywhere")

    # The guardian: a cleared file and a garbage file are restored.
    write_doc(w.dirs[1], {"claudeAiOauth": CLEARED})
    wait_for(lambda: w.file_cred(w.dirs[1]) is not None, 10, "the cleared file restored")
    (w.dirs[0] / ".credentials.json").write_text('{"claudeAiOauth": {"accessToken": "x')
    wait_for(lambda: w.file_cred(w.dirs[0]) is not None, 10, "the garbage file repaired")

    # A new login in the other dir wins everywhere; the agent refreshes it when due.
    second = w.login(w.dirs[1])
    wait_for(lambda: w.in_step() and w.current().expires_at_ms >= second.expires_at_ms, 10,
             "the second login everywhere")
    rotations = w.server.stats().rotations
    wait_for(lambda: w.server.stats().rotations > rotations, 3 * LIFETIME_S,
             "a refresh by the agent")
    code, out, _ = w.cli("refresh", "refresh")
    assert code == 0 and out.startswith(("refreshed:", "adopted:")), out
    wait_for(w.in_step, 10, "the refreshed login everywhere")
    for name in ("status", "status --json"):
        code, _, _ = w.cli(name, *name.split())
        assert code == 0

    # A lost response: the server rotates, the agent never sees the answer and says so.
    w.server.inject_lost()
    wait_for(lambda: any(r.outcome == "lost" for r in w.server.log()), 3 * LIFETIME_S,
             "the lost rotation")
    wait_for(lambda: "relogin-required" in w.notice_events(), 15, "the re-login notice")
    code, _, _ = w.cli("status after the loss", "status", "--json")
    assert code == 0

    # The user logs in again (long lifetimes from here): a restore notice; `credsync token`
    # prints the new token, and only there.
    w.server.set_lifetimes(3600)
    third = w.login(w.dirs[0])
    wait_for(lambda: w.everywhere(third), 10, "the new login everywhere")
    wait_for(lambda: "restored" in w.notice_events(), 15, "the restore notice")
    token = credsync(["token", "--config", str(w.config)], env=w.env)
    assert token.returncode == 0 and token.stdout == third.access_token + "\n"
    w.outputs["token: stderr"] = token.stderr

    # invalid_grant: another machine redeemed the refresh token; presenting it again is reuse.
    reply = httpx.post(w.server.url, json={"grant_type": "refresh_token",
                                           "refresh_token": third.refresh_token,
                                           "client_id": w.server.client_id}, timeout=10)
    assert reply.status_code == 200
    code, out, err = w.cli("refresh after reuse", "refresh")
    assert code == 3 and out.startswith("relogin-required"), (out, err)
    assert w.server.stats().invalid_grants >= 1
    # The agent learns of the one-shot's refusal at its next round: a session touching its
    # file starts one now (else the 60 s audit would).
    path = w.dirs[1] / ".credentials.json"
    path.write_bytes(path.read_bytes())
    wait_for(lambda: w.notice_events().count("relogin-required") >= 2, 15,
             "the second re-login notice")
    code, _, _ = w.cli("status after invalid_grant", "status")
    assert code == 0

    # Config errors that hold a token where a URL or a secret belongs.
    bad = w.root / "bad.toml"
    bad.write_text(f'[refresh]\ntoken_url = "{third.refresh_token}"\nclient_secret = 31337\n'
                   f'[notify]\nwebhook = "{third.access_token}"\n')
    code, _, err = w.cli("bad config", "status", config=bad)
    assert code == 2 and "refresh.token_url" in err and "refresh.client_secret" in err
    assert "31337" not in err
    bad.unlink()  # the test's own input, not something credsync wrote
    env_bad = {**w.env, "CREDSYNC_REFRESH__TOKEN_URL": third.access_token}
    proc = credsync(["status", "--config", str(w.config)], env=env_bad)
    assert proc.returncode == 2 and "CREDSYNC_REFRESH__TOKEN_URL" in proc.stderr
    w.outputs["bad environment: stderr"] = proc.stderr

    w.agent.stop()


def test_no_token_leaks_from_any_scenario(world: World) -> None:
    started = time.time()
    run_scenarios(world)
    tokens = issued_tokens(world.server)
    for d in world.dirs:  # and whatever the stores hold (all issued by the server anyway)
        cred = world.file_cred(d)
        if cred is not None:
            tokens |= {cred.access_token, cred.refresh_token}
    tokens.discard("")
    assert len(tokens) >= 12, len(tokens)  # 4 logins, several rotations, a lost one

    for name, text in world.outputs.items():
        assert not found_in(text, tokens), f"token in {name}: {text}"

    last_good = scope_dir(world.state) / "last-good.json"
    assert stat.S_IMODE(last_good.stat().st_mode) == 0o600
    stores = {*(d / ".credentials.json" for d in world.dirs), *world.sinks, last_good}
    keychain_files = world.keyring.root / "data" / "keyrings"
    scanned, leaks = 0, {}
    for root in (world.root, world.keyring.root):
        for path in regular_files(root):
            if path in stores or keychain_files in path.parents:
                continue
            scanned += 1
            if hits := found_in(path.read_bytes(), tokens):
                leaks[str(path)] = hits
    for path in regular_files(REPO):  # anything a process wrote into its working directory
        if ".git" not in path.parts and path.stat().st_mtime >= started:
            scanned += 1
            if hits := found_in(path.read_bytes(), tokens):
                leaks[str(path)] = hits
    assert not leaks, f"tokens (by fingerprint) outside the stores: {leaks}"

    # The scan looked at what matters, and would have seen a token.
    names = {p.name for p in regular_files(world.root)}
    assert {"credsync.log", "agent.json", "login.json", "journal", "alerts.json",
            "received.jsonl", "config.stderr"} <= names, names
    assert scanned >= 10
    log_text = world.log.read_text()
    assert "refreshed" in log_text and "re-login" in log_text
    assert found_in(last_good.read_bytes(), tokens)
    assert all(found_in(p.read_bytes(), tokens) for p in world.sinks)


# --- exception texts ---------------------------------------------------------------------------

def exception_text(exc: BaseException) -> str:
    """Everything a log or a traceback could show of ``exc``, causes included."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + repr(exc)


def _mock_refresher(status: int, body: bytes) -> HttpRefresher:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})
    return HttpRefresher("https://auth.example/v1/oauth/token", "client", "scope", "claude", 5,
                         None, transport=httpx.MockTransport(handler))


def test_refresh_failures_never_carry_a_token() -> None:
    with OAuthServer(access_lifetime_s=3600) as server:
        oauth = server.issue_login()
        cred = Credential(oauth)
        tokens = {cred.access_token, cred.refresh_token}
        texts = []
        with HttpRefresher(server.url, server.client_id, "", "claude", 5) as refresher:
            new = refresher.refresh(cred).credential
            tokens |= {new.access_token, new.refresh_token}
            texts.append(repr(new))
            for fault in (None, "drop", "lost", "garbage", "503"):
                if fault == "drop":
                    server.inject_drop()
                elif fault == "lost":
                    server.inject_lost()
                elif fault == "garbage":
                    server.inject_garbage()
                elif fault == "503":
                    server.inject_status(503)
                with pytest.raises(CredsyncError) as caught:
                    refresher.refresh(cred)  # already redeemed: reuse, or the fault
                texts.append(exception_text(caught.value))
        tokens |= issued_tokens(server)
    # A server that echoes what it was sent, in an error and in a 5xx body.
    said = f"bad token {cred.refresh_token} / {cred.access_token}"
    echo = json.dumps({"error": "invalid_grant", "error_description": said})
    for status in (400, 500):
        with _mock_refresher(status, echo.encode()) as refresher, \
                pytest.raises(CredsyncError) as caught:
            refresher.refresh(cred)
        texts.append(exception_text(caught.value))
    assert any("invalid_grant" in t for t in texts)
    for text in texts:
        assert not found_in(text, tokens), text


def test_store_refusals_never_carry_a_token(tmp_path: Path) -> None:
    cred = Credential.build("sk-ant-oat01-" + "A" * 40, "sk-ant-ort01-" + "B" * 40,
                            1_900_000_000_000)
    hostile = Credential.build("sk-ant-oat01-x\n$(id)", "sk-ant-ort01-" + "C" * 40,
                               1_900_000_000_000)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    texts = []
    for store, c in ((SinkStore(shared / "t", "json"), cred),
                     (SinkStore(tmp_path / "t", "env"), hostile),
                     (SinkStore(tmp_path / "t2", "access-token"), Credential.build("", "", 0))):
        with pytest.raises(StoreError) as caught:
            store.write(c)
        texts.append(exception_text(caught.value))
    reading = parse_document(json.dumps({"claudeAiOauth": cred.to_json_obj()}).encode())[0]
    texts += [repr(cred), str(cred), repr(reading), str(reading)]
    for text in texts:
        assert not found_in(text, {cred.access_token, cred.refresh_token, hostile.access_token,
                                   hostile.refresh_token}), text


# --- notification texts ------------------------------------------------------------------------

def test_notices_never_carry_a_token_whatever_the_inputs() -> None:
    access = "sk-ant-oat01-" + "q" * 60
    refresh = "sk-ant-ort01-" + "r" * 60
    opaque = "Zm9vYmFyYmF6cXV4" * 4  # a 64-character opaque token
    tokens = {access, refresh, opaque}
    reason = (f"token endpoint answered 400 invalid_grant: refresh token {refresh} "
              f"(access {access}, bearer {opaque})")
    clock = FakeClock(1_900_000_000.0)
    policy = AlertPolicy(NotifySection(remind_every_h=1, warn_before_days=3), clock)
    notices = policy.observe(AuthObservation(True, reason, ["/home/u/.claude"], clock.now(),
                                             "fp-old"))
    clock.advance(3700)
    notices += policy.observe(AuthObservation(True, reason, ["/home/u/.claude"], None, "fp-old"))
    active = policy.active_alert
    clock.advance(60)
    notices += policy.observe(AuthObservation(False, valid_login_fingerprint="fp-new",
                                              refresh_token_expires_at=clock.now() + 3600))
    clock.advance(90_000)
    notices += policy.observe(AuthObservation(False, valid_login_fingerprint="fp-new",
                                              refresh_token_expires_at=clock.now() + 3600,
                                              affected_dirs=["/home/u/.claude"]))
    events = [n.event for n in notices]
    assert events == ["relogin-required", "relogin-reminder", "restored",
                      "refresh-token-expiring"], events
    assert active is not None
    texts = [t for n in notices for t in (n.title, n.body)]
    texts += [active.title, active.body, policy.to_json()]
    assert "invalid_grant" in notices[0].body  # the reason is shown, its tokens are not
    for text in texts:
        assert not found_in(text, tokens), text
