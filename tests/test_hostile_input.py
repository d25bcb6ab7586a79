"""Hostile and bad input: whatever the credential files, the keychain item, the sinks, the config
file or the CREDSYNC_* variables hold, credsync ends in a value or a clear error, never a crash.

Property-based (hypothesis) for the parsers and the config loader; a few generated bad configs
also go through the real ``credsync status`` process, which must exit 2 with no traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from keyring.backends import SecretService

from agent.cli.status import collect, iso, render_text
from agent.clock import FakeClock
from agent.config import (
    MAX_CONFIG_BYTES,
    SECRET_LOCS,
    NotifySection,
    RefreshSection,
    Settings,
    SinkEntry,
    load_settings,
)
from agent.credential import (
    MAX_DOCUMENT_BYTES,
    Credential,
    Reading,
    ReadState,
    merged_document,
    parse_document,
    reading_from_document,
)
from agent.errors import ConfigError, StoreError
from agent.ledger import Ledger
from agent.loop.agent import Agent
from agent.reconcile import PARTIAL_GRACE_S, Reconciler
from agent.sim.server import OAuthServer
from agent.stores.base import Store
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.keychain import KeychainBackend, KeychainCalls, KeychainStore, MemoryKeyring
from agent.stores.sink import SinkStore
from tests.agentproc import AgentProcess, credsync, wait_for, write_config
from tests.factories import make_cred, write_doc
from tests.realkeyring import RealKeyring, real_keyring  # noqa: F401

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BASE_MS = (int(time.time()) + 6 * 3600) * 1000  # a real login: expires within a day
FORMATS = ("claude", "access-token", "env", "json")
KEYRING_APPID = "Python keyring library"  # keyring's SecretService backend adds this attribute
# Fast examples: hypothesis runs each property in well under a second per hundred.
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- strategies ------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "sk-ant-oat01-abc", "a b", "x\ny", "\x00", "\u202e", "1e400"]))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=3),
    max_leaves=10)
OAUTH_KEYS = ["accessToken", "refreshToken", "expiresAt", "refreshTokenExpiresAt", "scopes",
              "subscriptionType"]
oauth_objects = st.dictionaries(st.sampled_from(OAUTH_KEYS) | st.text(max_size=6), json_values,
                                max_size=6)
# Mostly well-formed logins with one field or another turned hostile.
near_valid_oauth = st.fixed_dictionaries(
    {"accessToken": st.sampled_from(["sk-ant-oat01-aaaa", ""]) | json_scalars,
     "refreshToken": st.sampled_from(["sk-ant-ort01-bbbb", ""]) | json_scalars,
     "expiresAt": st.sampled_from([BASE_MS, 0, -1, 2**63, 10**30]) | json_scalars},
    optional={"refreshTokenExpiresAt": json_scalars, "scopes": json_values})
documents = st.one_of(
    st.dictionaries(st.sampled_from(["claudeAiOauth", "mcpOAuth"]) | st.text(max_size=6),
                    json_values, max_size=3),
    st.builds(lambda oauth, other: {"claudeAiOauth": oauth, **other},
              oauth_objects | near_valid_oauth,
              st.dictionaries(st.text(max_size=6), json_values, max_size=2)))


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj).encode()  # NaN and Infinity as JavaScript writes them


raw_documents = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode(errors="surrogatepass")),
    documents.map(dump_json),
    st.sampled_from([b"[" * 5_000, b'{"claudeAiOauth": ' * 3_000, b"\xef\xbb\xbf{}",
                     b'{"claudeAiOauth": {"accessToken": "a", "refreshToken": "b", '
                     b'"expiresAt": 1e400}}']))


# --- what every reading must allow -----------------------------------------------------------

def exercise(reading: Reading, token_only: bool = False) -> None:
    """Everything the agent and status do with a reading must work on it. A token-only sink
    reads back a partial credential: the access token, no refresh token."""
    assert isinstance(reading.state, ReadState)
    assert isinstance(reading.detail, str) and "\n" not in reading.detail
    cred = reading.credential
    if reading.state is ReadState.VALID:
        assert cred is not None and (bool(cred.access_token) if token_only else not cred.is_blank)
    if cred is None:
        return
    repr(cred)
    assert cred.fingerprint
    iso(cred.expires_at)  # status and the agent's log line show it as a date
    rt_end = cred.refresh_token_expires_at
    if rt_end is not None:
        iso(rt_end)
    json.dumps(merged_document({"other": 1}, cred))
    if reading.state is ReadState.VALID:
        for fmt in FORMATS:
            try:
                SinkStore(Path("/nonexistent/sink"), fmt).render(cred, None)
            except StoreError as exc:
                assert cred.access_token not in str(exc)


# --- the credential parser -------------------------------------------------------------------

@FAST
@given(raw_documents)
def test_any_bytes_parse_to_a_reading(raw: bytes) -> None:
    reading, doc = parse_document(raw)
    exercise(reading)
    if doc is None:
        assert reading.state is ReadState.INVALID  # nothing parsed: nothing to keep
    else:
        assert isinstance(doc, dict) and reading == reading_from_document(doc)


@FAST
@given(documents)
def test_any_document_gives_a_reading_and_a_valid_one_survives_a_rewrite(
        doc: dict[str, Any]) -> None:
    reading = reading_from_document(doc)
    exercise(reading)
    cred = reading.valid
    if cred is not None:
        again, _ = parse_document(json.dumps(merged_document(doc, cred)).encode())
        assert again.state is ReadState.VALID and again.credential == cred


WRONG_TYPES = [
    ({"accessToken": 5, "refreshToken": "r", "expiresAt": BASE_MS}, "accessToken is int"),
    ({"accessToken": "a", "refreshToken": ["r"], "expiresAt": BASE_MS}, "refreshToken is list"),
    ({"accessToken": "a", "refreshToken": "r", "expiresAt": "soon"}, "expiresAt is str"),
    ({"accessToken": "a", "refreshToken": "r", "expiresAt": True}, "expiresAt is bool"),
    # json.dumps writes Infinity, which is not JSON (the CLI's JSON.parse rejects it too).
    ({"accessToken": "a", "refreshToken": "r", "expiresAt": float("inf")}, "not JSON"),
    ({"accessToken": "a", "refreshToken": "r", "expiresAt": 10**30}, "out of range"),
    ({"accessToken": "a\nEVIL=1", "refreshToken": "r", "expiresAt": BASE_MS},
     "accessToken holds whitespace"),
    ({"accessToken": "a", "refreshToken": "r\u0000", "expiresAt": BASE_MS},
     "refreshToken holds whitespace or control"),
    ("a string", "claudeAiOauth is str, expected an object"),
]


@pytest.mark.parametrize(("oauth", "named"), WRONG_TYPES)
def test_wrong_types_are_named(oauth: Any, named: str) -> None:
    reading, _ = parse_document(json.dumps({"claudeAiOauth": oauth}).encode())
    assert reading.state is ReadState.INVALID
    assert named in reading.detail


def test_an_overflowing_expiry_is_out_of_range() -> None:
    raw = b'{"claudeAiOauth": {"accessToken": "a", "refreshToken": "r", "expiresAt": 1e400}}'
    reading, _ = parse_document(raw)
    assert reading.state is ReadState.INVALID and "out of range" in reading.detail


def test_an_oversized_credential_file_is_refused(tmp_path: Path) -> None:
    cred = make_cred(BASE_MS)
    doc = {"claudeAiOauth": cred.to_json_obj(), "padding": "x" * MAX_DOCUMENT_BYTES}
    (tmp_path / ".credentials.json").write_text(json.dumps(doc))
    reading = ClaudeFileStore(tmp_path, sleep=lambda _: None).read()
    assert reading.state is ReadState.INVALID and "over 1000000 bytes" in reading.detail
    sink = tmp_path / "sink.json"
    sink.write_text(json.dumps(doc))
    assert SinkStore(sink, "claude").read().state is ReadState.INVALID


# --- the stores: files, sinks, keychain ------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@FAST
@given(raw=raw_documents)
def test_a_credential_file_with_any_content_reads_and_is_repaired(workdir: Path,
                                                                  raw: bytes) -> None:
    config_dir = workdir / "claude"
    config_dir.mkdir(exist_ok=True)
    (config_dir / ".credentials.json").write_bytes(raw)
    store = ClaudeFileStore(config_dir, sleep=lambda _: None)
    reading = store.read()
    exercise(reading)
    good = make_cred(BASE_MS)
    current = reading.valid
    if current is None or not current.fresher_than(good):
        assert store.write(good) is True
        assert store.read().valid == good


@FAST
@given(fmt=st.sampled_from(FORMATS), raw=raw_documents | st.sampled_from(
    [b"CLAUDE_CODE_OAUTH_TOKEN=", b"OTHER=x", b'{"access_token": "t", "expires_at": 1e400}',
     b'{"access_token": {}, "expires_at": 1}', b'{"access_token": "t", "expires_at": "1"}',
     b'{"access_token": "t", "expires_at": ' + b"9" * 5000 + b"}", b"[]", b'"str"']))
def test_a_sink_with_any_content_reads_and_is_rewritten(workdir: Path, fmt: str,
                                                        raw: bytes) -> None:
    path = workdir / "sinks" / f"token.{fmt}"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(raw)
    store = SinkStore(path, fmt)
    exercise(store.read(), token_only=fmt != "claude")
    good = make_cred(BASE_MS)
    store.write(good)
    assert store.read().valid is not None
    assert store.read().credential.access_token == good.access_token  # type: ignore[union-attr]


def test_json_sink_types_are_named(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    cases = {b'{"access_token": 5, "expires_at": 1}': "access_token is int",
             b'{"access_token": "t", "expires_at": "x"}': "expires_at is str",
             b'{"access_token": "t", "expires_at": 1e400}': "expires_at is float",
             b"[1]": "a list, expected an object"}
    for raw, named in cases.items():
        path.write_bytes(raw)
        reading = SinkStore(path, "json").read()
        assert reading.state is ReadState.INVALID and named in reading.detail, (raw, reading)


@pytest.mark.parametrize("fmt", ["access-token", "env"])
def test_a_token_that_is_not_a_bearer_token_never_reaches_a_token_sink(tmp_path: Path,
                                                                       fmt: str) -> None:
    # A token comes from a server too: one with a newline or shell syntax must not be copied
    # into a file a shell may source.
    for hostile in ("abc\nLD_PRELOAD=/tmp/x.so", "$(touch /tmp/pwned)", "tok'quote",
                    "tok with-space"):
        store = SinkStore(tmp_path / f"t-{fmt}", fmt)
        with pytest.raises(StoreError, match="not a bearer token") as caught:
            store.write(Credential.build(hostile, "rt", BASE_MS))
        assert hostile not in str(caught.value)
        assert not store.path.exists()


@FAST
@given(item=st.text(max_size=200) | documents.map(json.dumps))
def test_a_keychain_item_with_any_content_reads_and_is_repaired(item: str) -> None:
    backend = MemoryKeyring()
    store = KeychainStore(backend, calls=KeychainCalls(timeout_s=5))
    try:
        backend.set_password(store.service, store.account, item)
        reading = store.read()
        exercise(reading)
        good = make_cred(BASE_MS)
        current = reading.valid
        if current is None or not current.fresher_than(good):
            assert store.write(good) is True
            assert store.read().valid == good
    finally:
        store.close()


def _in_thread(fn: Any, deadline_s: float = 5.0) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(fn())
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(deadline_s)
    assert not thread.is_alive(), "blocked: a FIFO was opened for reading"
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]


def test_a_fifo_where_a_credential_file_belongs_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".credentials.json")
    reading = _in_thread(ClaudeFileStore(tmp_path, sleep=lambda _: None).read)
    assert reading.state is ReadState.ERROR and "not a regular file" in reading.detail
    os.mkfifo(tmp_path / "sink")
    reading = _in_thread(SinkStore(tmp_path / "sink", "access-token").read)
    assert reading.state is ReadState.ERROR and "not a regular file" in reading.detail
    os.mkfifo(tmp_path / "config.toml")
    with pytest.raises(ConfigError, match="not a regular file"):
        _in_thread(lambda: load_settings(tmp_path / "config.toml"))


# --- the agent: a whole round over hostile stores and a hostile state dir ---------------------

state_files = st.fixed_dictionaries({}, optional={
    "agent.json": raw_documents | json_values.map(lambda v: dump_json({"stores": {"x": v},
                                                                        "rejected": v})),
    "refresh.json": raw_documents | json_values.map(lambda v: dump_json({"auth": v,
                                                                          "rejected": v})),
    "last-good.json": raw_documents,
    "alerts.json": raw_documents})


@settings(max_examples=60, deadline=None)
@given(files=st.lists(raw_documents, min_size=2, max_size=2), item=st.none() | st.text(
    max_size=100) | documents.map(json.dumps), sinks=st.lists(raw_documents, min_size=4,
                                                              max_size=4), state=state_files)
def test_the_agent_survives_any_stores_and_state(files: list[bytes], item: str | None,
                                                 sinks: list[bytes],
                                                 state: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = [root / "cfg0", root / "cfg1"]
        for d, raw in zip(dirs, files, strict=True):
            d.mkdir()
            (d / ".credentials.json").write_bytes(raw)
        backend = MemoryKeyring()
        keychain = KeychainStore(backend, calls=KeychainCalls(timeout_s=5))
        if item is not None:
            backend.set_password(keychain.service, keychain.account, item)
        sink_stores = [SinkStore(root / "sinks" / fmt, fmt) for fmt in FORMATS]
        (root / "sinks").mkdir(mode=0o700)
        for store, raw in zip(sink_stores, sinks, strict=True):
            store.path.write_bytes(raw)
        (root / "state").mkdir(mode=0o700)
        for name, raw in state.items():
            (root / "state" / name).write_bytes(raw)
        stores: list[Store] = [*(ClaudeFileStore(d, sleep=lambda _: None) for d in dirs),
                               keychain, *sink_stores]
        clock = FakeClock(BASE_MS / 1000 - 3600)
        agent = Agent(stores, Ledger(root / "state"), clock, queue.Queue())
        try:
            agent.load()
            agent.reconcile()
            clock.advance(PARTIAL_GRACE_S + 0.1)  # the longest quiet period garbage gets
            report = agent.reconcile()  # garbage now settled: repaired, if there is a login
            status = collect(Reconciler(stores, Ledger(root / "state"), clock), "c.toml",
                             clock.now())
            json.dumps(status.to_json())
            render_text(status)
        finally:
            keychain.close()
        if report.winner is not None:
            # Every CLI file now holds the winner, cleared and garbage ones too, except where
            # the document says the user logged out (no claudeAiOauth entry).
            for d in dirs:
                reading, _ = parse_document((d / ".credentials.json").read_bytes())
                if reading.state is not ReadState.LOGGED_OUT:
                    assert reading.valid is not None, reading
                    assert reading.valid.same_tokens(report.winner)


def test_garbage_in_the_real_keychain_is_an_error_or_invalid_never_a_crash(
        real_keyring: RealKeyring) -> None:  # noqa: F811
    backend: KeychainBackend = SecretService.Keyring()  # type: ignore[no-untyped-call]
    store = KeychainStore(backend, calls=KeychainCalls(timeout_s=5))
    # secret-tool stores raw bytes: not UTF-8, oversized, nested, an infinite expiry
    hostile = [b"\xff\xfe\x00garbage", b"x" * (MAX_DOCUMENT_BYTES + 10), b"[" * 50_000,
               b'{"claudeAiOauth": {"accessToken": "a", "refreshToken": "b", '
               b'"expiresAt": 1e400}}']
    try:
        for raw in hostile:
            # keyring's own attributes: the very item credsync reads and replaces
            subprocess.run(["secret-tool", "store", "--label=hostile", "service", store.service,
                            "username", store.account, "application", KEYRING_APPID],
                           input=raw, env=real_keyring.env, capture_output=True, timeout=10,
                           check=True)
            reading = store.read()
            assert reading.state in (ReadState.INVALID, ReadState.ERROR), (raw[:20], reading)
            exercise(reading)
            good = make_cred(BASE_MS)
            if reading.state is ReadState.INVALID:
                assert store.write(good) is True and store.read().valid == good
    finally:
        store.close()


HOSTILE_STATE = {"agent.json": b"\xff\xfe", "refresh.json": b"[" * 100_000,
                 "last-good.json": b"{" * 100_000, "alerts.json": b"\xff" + b"[" * 50_000,
                 "journal": b"\xff\xfe+abc\n" + b"\x00" * 100}


@pytest.mark.integration
def test_a_damaged_state_dir_never_stops_credsync(tmp_path: Path) -> None:
    # The state dir is private, but a crash, a full disk or a bad restore can damage it: every
    # command and the agent must carry on (rebuilding what they need), never show a traceback.
    dirs = [tmp_path / "cfg0", tmp_path / "cfg1"]
    dirs[1].mkdir()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    for name, raw in HOSTILE_STATE.items():
        (state / name).write_bytes(raw)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CREDSYNC_")}
    with OAuthServer(access_lifetime_s=3600) as server:
        write_doc(dirs[0], {"claudeAiOauth": server.issue_login()})
        config = write_config(tmp_path / "config.toml", dirs, state, keychain=False,
                              refresh={"token_url": server.url, "jitter": 0})
        for args, code, first in ((["status"], 0, "config "), (["refresh"], 0, "refreshed:")):
            out = credsync([*args, "--config", str(config)], env=env)
            assert "Traceback" not in out.stderr, out.stderr
            assert out.returncode == code and out.stdout.startswith(first), out
        agent = AgentProcess(config, env)
        try:
            agent.wait_started(state)
            wait_for(lambda: (dirs[1] / ".credentials.json").exists(), 10, "the fan-out")
        finally:
            agent.stop()
        assert agent.proc.returncode == 0 and "Traceback" not in agent.output(), agent.output()
        assert server.stats().invalid_grants == 0


# --- the config loader -----------------------------------------------------------------------

def _fields(model: Any) -> list[str]:
    return list(model.model_fields)


SECTIONS = {name: _fields(Settings.model_fields[name].annotation)
            for name in ("agent", "claude", "refresh", "notify")}
SINK_KEYS = _fields(SinkEntry)
PLAUSIBLE = ["info", "DEBUG", "claude", "oauth2", "json", "env", "access-token", "~/x", "/tmp/x",
             "$HOME/y", "", "http://127.0.0.1:1/t", "https://", "http://[::1", "http://h:0/",
             "http://h:99999/", "https://h/p q", "X_Y", "1x", 0, 1, -1, 0.5, 5000, 1e9, True]
toml_scalars = st.one_of(
    st.text(max_size=20), st.integers(min_value=-2**63, max_value=2**63 - 1), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(PLAUSIBLE),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 1, 1)),
    st.dates(), st.times())
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=3),
    max_leaves=8)


def section(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), toml_values,
                           max_size=5) | toml_values


config_docs = st.fixed_dictionaries(
    {}, optional={**{name: section(keys) for name, keys in SECTIONS.items()},
                  "sinks": st.lists(section(SINK_KEYS), max_size=3) | toml_values,
                  "extra": toml_values})


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """A value written in TOML's inline syntax (tomllib has no writer)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return ("inf" if value > 0 else "-inf") if value in (float("inf"), float("-inf")) \
            else repr(value)
    if isinstance(value, (int, dt.date, dt.time)):
        return value.isoformat() if not isinstance(value, int) else str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: Mapping[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


@contextlib.contextmanager
def credsync_env(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with no CREDSYNC_* variable but ``values`` (the loader reads os.environ)."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.upper().startswith("CREDSYNC_")]:
        del os.environ[name]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_outcome(path: Path) -> Settings | ConfigError:
    """Load; a ConfigError is returned after its lines were checked, anything else fails."""
    try:
        return load_settings(path)[0]
    except ConfigError as exc:
        assert exc.problems
        for line in exc.problems:
            assert line and line.isprintable(), line  # one line each, nothing hidden in it
            assert line.startswith((f"{path}:", "environment variable CREDSYNC_",
                                    "environment variable credsync_",
                                    "environment variables CREDSYNC_")), line
        return exc


@FAST
@given(doc=config_docs)
def test_any_toml_config_loads_or_is_a_clear_error(workdir: Path, doc: dict[str, Any]) -> None:
    text = toml_document(doc)
    tomllib.loads(text)  # the generated document is valid TOML: validation is what is tested
    path = workdir / "config.toml"
    path.write_text(text)
    with credsync_env({}):
        outcome = load_outcome(path)
    if isinstance(outcome, ConfigError):
        assert "TOML syntax" not in str(outcome)


ENV_NAMES = ["CREDSYNC_SINKS", *(f"CREDSYNC_{s.upper()}" for s in SECTIONS),
             *(f"CREDSYNC_{s.upper()}__{k.upper()}" for s, keys in SECTIONS.items()
               for k in keys)]
env_names = st.sampled_from(ENV_NAMES) | st.sampled_from(ENV_NAMES).map(str.lower) | st.text(
    string.ascii_uppercase + "_", min_size=1, max_size=8).map(lambda s: "CREDSYNC_" + s)
# No NUL and no lone surrogates: neither can be put in a real process environment.
env_chars = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
env_values = st.text(env_chars, max_size=30) | toml_values.map(
    lambda v: json.dumps(v, default=str)) | st.sampled_from([str(v) for v in PLAUSIBLE])


@FAST
@given(env=st.dictionaries(env_names, env_values, max_size=4),
       doc=st.none() | config_docs)
def test_any_environment_loads_or_is_a_clear_error(workdir: Path, env: dict[str, str],
                                                   doc: dict[str, Any] | None) -> None:
    path = workdir / "env-config.toml"
    path.write_text(toml_document(doc) if doc else "")
    with credsync_env(env):
        load_outcome(path)


@FAST
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_as_a_config_file_load_or_are_a_clear_error(workdir: Path, raw: bytes) -> None:
    path = workdir / "raw.toml"
    path.write_bytes(raw)
    with credsync_env({}):
        load_outcome(path)


SECRET = "sk-ant-ort01-" + "Zq9" * 20
# Values pasted into the wrong place: the error must not repeat them.
secret_values = st.sampled_from([SECRET, f"x{SECRET}", f"http {SECRET}", f"{SECRET}:1",
                                "sim-rt-" + "Q" * 32])
scalar_locs = [(s, k) for s, keys in SECTIONS.items() for k in keys]


@FAST
@given(loc=st.sampled_from(scalar_locs) | st.sampled_from(sorted(SECRET_LOCS)),
       value=secret_values | st.integers(min_value=10**12).map(lambda n: n * 1000 + 777)
       | st.floats(min_value=1e12, max_value=1e15), as_env=st.booleans())
def test_config_errors_never_echo_a_secret(workdir: Path, loc: tuple[str, str], value: Any,
                                           as_env: bool) -> None:
    section_name, key = loc
    path = workdir / "secret.toml"
    env: dict[str, str] = {}
    if as_env:
        path.write_text("")
        env = {f"CREDSYNC_{section_name.upper()}__{key.upper()}": str(value)}
    else:
        path.write_text(toml_document({section_name: {key: value}}))
    with credsync_env(env):
        outcome = load_outcome(path)
    if isinstance(outcome, ConfigError):
        if isinstance(value, str):
            assert value not in str(outcome)  # a token pasted anywhere is not repeated
        assert SECRET not in str(outcome)
        if loc in SECRET_LOCS:
            assert str(value) not in str(outcome)  # a secret field's value is never shown


@pytest.mark.parametrize("value", [123456789, 1.5, True, ["s3cr3t-list"], {"v": "s3cr3t-t"},
                                   dt.date(2031, 1, 2)])
def test_a_client_secret_of_the_wrong_type_is_named_not_shown(tmp_path: Path, value: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_document({"refresh": {"client_secret": value}}))
    with credsync_env({}), pytest.raises(ConfigError) as caught:
        load_settings(path)
    text = str(caught.value)
    assert "refresh.client_secret" in text and "valid string" in text
    for shown in (str(value), repr(value), "s3cr3t", "123456789", "2031"):
        assert shown not in text


BAD_TYPES = [
    ({"agent": {"debounce_ms": "soon"}}, "agent.debounce_ms", "milliseconds"),
    ({"agent": {"log_level": 3}}, "agent.log_level", "one of debug"),
    ({"claude": {"config_dirs": 5}}, "claude.config_dirs", "list of directory paths"),
    ({"claude": {"keychain": "yes please"}}, "claude.keychain", "true or false"),
    ({"refresh": {"at_fraction": float("inf")}}, "refresh.at_fraction", "finite number"),
    ({"refresh": {"margin_s": float("inf")}}, "refresh.margin_s", "finite number"),
    ({"refresh": {"token_url": "http://[::1"}}, "refresh.token_url", "valid URL"),
    ({"refresh": {"token_url": "http://a b/"}}, "refresh.token_url", "spaces"),
    ({"notify": {"webhook": "https://h:99999/x"}}, "notify.webhook", "valid URL"),
    ({"notify": {"command": "notify-send"}}, "notify.command", "argv list"),
    ({"sinks": [{"path": "/tmp/x", "format": "yaml"}]}, "sinks[0].format", "one of claude"),
    ({"sinks": [{"format": "env"}]}, "sinks[0].path", "a file path"),
    ({"agent": {"state_dir": "/tmp/a\u0000b"}}, "agent.state_dir", "NUL"),
    ({"agent": 5}, "agent:", "a [agent] table"),
    ({"claude": {"config_dir": ["~/.claude"]}}, "claude.config_dir", "unknown key"),
]


@pytest.mark.parametrize(("doc", "where", "expected"), BAD_TYPES)
def test_wrong_config_types_are_named(tmp_path: Path, doc: dict[str, Any], where: str,
                                      expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_document(doc))
    with credsync_env({}), pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert len(caught.value.problems) == 1, caught.value.problems
    line = caught.value.problems[0]
    assert line.startswith(f"{path}: {where}") and expected in line, line


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("CREDSYNC_SINKS", "not json", "not valid JSON; expected a list of [[sinks]] tables"),
    ("CREDSYNC_CLAUDE__CONFIG_DIRS", "[1", "not valid JSON; expected a list of directory"),
    ("CREDSYNC_NOTIFY", "{", "not valid JSON; expected a [notify] table"),
    ("CREDSYNC_REFRESH__TIMEOUT_S", "forever", "valid number"),
])
def test_bad_environment_values_name_the_variable(tmp_path: Path, name: str, value: str,
                                                  expected: str) -> None:
    with credsync_env({name: value}), pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert caught.value.problems == [line for line in caught.value.problems
                                     if line.startswith(f"environment variable {name}: ")]
    assert expected in str(caught.value)


def test_an_oversized_config_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text("[agent]\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with credsync_env({}), pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == [
        f"{path}: over {MAX_CONFIG_BYTES} bytes, too big for a credsync config; check the path"]


def test_a_deeply_nested_config_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 200_000 + "]" * 200_000 + "\n")
    with credsync_env({}), pytest.raises(ConfigError, match=r"nested too deeply|TOML syntax"):
        load_settings(path)


@FAST
@given(url=st.sampled_from(["http://", "https://"]).flatmap(
    lambda scheme: st.text(max_size=25).map(lambda rest: scheme + rest)))
def test_every_url_the_config_accepts_can_be_sent_to(url: str) -> None:
    # A URL the loader lets through must not blow up in the HTTP client at refresh time.
    try:
        RefreshSection(token_url=url)
        NotifySection(webhook=url)
    except ValueError:
        return
    with httpx.Client() as client:
        client.build_request("POST", url, json={})


# --- the CLI never shows a traceback ---------------------------------------------------------

def _cli_refuses(path: Path, env: Mapping[str, str] | None = None) -> str:
    full = {k: v for k, v in os.environ.items() if not k.upper().startswith("CREDSYNC_")}
    out = credsync(["status", "--config", str(path)], env={**full, **(env or {})}, timeout=30)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.splitlines()
    assert lines and all(line.startswith("credsync: ") for line in lines), out.stderr
    return out.stderr


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(doc=config_docs)
def test_generated_bad_configs_exit_2_without_a_traceback(workdir: Path,
                                                          doc: dict[str, Any]) -> None:
    path = workdir / "cli.toml"
    path.write_text(toml_document(doc))
    with credsync_env({}):
        assume(isinstance(load_outcome(path), ConfigError))
    _cli_refuses(path)


def test_bad_files_and_variables_exit_2_without_a_traceback(tmp_path: Path) -> None:
    cases: list[tuple[bytes, dict[str, str]]] = [
        (b"\xff\xfe[agent]", {}),
        (b"[agent\nstate_dir = 1", {}),
        (b"a = " + b"[" * 100_000, {}),
        (b"x" * (MAX_CONFIG_BYTES + 1), {}),
        (b'[refresh]\nclient_secret = 31337', {}),
        (b"", {"CREDSYNC_SINKS": "[{"}),
        (b"", {"CREDSYNC_AGENT__DEBOUNCE_MS": "-1"}),
    ]
    for i, (raw, env) in enumerate(cases):
        path = tmp_path / f"c{i}.toml"
        path.write_bytes(raw)
        stderr = _cli_refuses(path, env)
        assert "31337" not in stderr
    _cli_refuses(tmp_path / "missing.toml")
    _cli_refuses(tmp_path)  # a directory


def test_odd_but_valid_configs_fail_cleanly_at_run_time(tmp_path: Path) -> None:
    # Valid to the loader, unusable at run time: a clear message, exit 1, never a traceback.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    (tmp_path / "sinkdir").mkdir()
    config = tmp_path / "c.toml"
    config.write_text(toml_document({
        "agent": {"state_dir": str(blocker / "state"), "log_file": ""},
        "claude": {"config_dirs": [str(blocker), str(tmp_path / "missing")], "keychain": False},
        "refresh": {"enabled": False},
        "sinks": [{"path": str(tmp_path / "sinkdir"), "format": "json"}]}))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CREDSYNC_")}
    status = credsync(["status", "--config", str(config)], env=env, timeout=30)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    assert "not a regular file" in status.stdout  # the sink that is a directory
    run = credsync(["run", "--config", str(config)], env=env, timeout=30)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("credsync: cannot create directory")
