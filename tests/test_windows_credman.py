"""credsync's Windows store against the Credential Manager double (agent.sim.credman), the
double also playing the CLI (agent.sim.claude_credman, written apart from the store's own
chunk code): after every credsync write a Claude Code session still reads its login; fresh
logins propagate both ways; a document longer than one blob survives, chunked as the CLI
chunks it; stale pieces are handled as the CLI handles them; the CLI's names and its switch;
failures are clear, name the target, never destroy the login and never show a token."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.credential import Credential, ReadState
from agent.errors import KeychainUnavailable, StoreError
from agent.ledger import Ledger
from agent.locks.mkdirlock import storage_write_lock
from agent.loop.build import build_stores
from agent.reconcile import Reconciler
from agent.sim.claude_credman import ClaudeCredman
from agent.sim.credman import CredmanDouble
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.keychain import KeychainStore, MemoryKeyring
from agent.stores.macos.identity import ClaudeEnv
from agent.stores.windows import chunks
from agent.stores.windows.credman import (
    CRED_MAX_CREDENTIAL_BLOB_SIZE,
    ERROR_ACCESS_DENIED,
    ERROR_BAD_USERNAME,
    RPC_X_BAD_STUB_DATA,
    VaultError,
)
from agent.stores.windows.identity import (
    CredmanIdentity,
    CredmanSwitch,
    credman_in_use,
    identity,
)
from agent.stores.windows.store import WindowsCredmanStore
from tests.agentproc import write_config
from tests.factories import make_cred

MAIN = "Claude Code-credentials/claude-code-user"


@dataclass
class Win:
    vault: CredmanDouble
    ident: CredmanIdentity
    store: WindowsCredmanStore
    cli: ClaudeCredman
    config_dir: Path
    on: list[bool]

    def cli_login(self) -> dict[str, Any] | None:
        return self.cli.login()


@pytest.fixture
def win(tmp_path: Path) -> Win:
    home = tmp_path / "home"
    config_dir = home / ".claude"
    config_dir.mkdir(parents=True)
    vault = CredmanDouble()
    ident = identity(ClaudeEnv(), home)
    on = [True]
    store = WindowsCredmanStore(ident, vault, ClaudeFileStore(ident.storage_dir),
                                lambda: on[0], config_dir=config_dir, lock_timeout_s=0.5)
    return Win(vault, ident, store, ClaudeCredman(vault, ident), config_dir, on)


def hours(n: float) -> int:
    return int((time.time() + n * 3600) * 1000)


def login_doc(cred: Credential, **other: Any) -> dict[str, Any]:
    return {"claudeAiOauth": cred.to_json_obj(), **other}


def big_section(size: int) -> dict[str, Any]:
    """MCP tokens enough to need several blobs, with text JSON.stringify keeps as it is."""
    entries = {f"server-{i}|{i:04x}": {"accessToken": f"mcp-{i}-" + "x" * 90,
                                      "expiresAt": 1_900_000_000_000 + i, "note": "café 😀",
                                      "ratio": 2.5, "ctl": "a\nb\x7f"}
               for i in range(size // 160 + 1)}
    return {"mcpOAuth": entries}


def js_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def cli_same_login(win: Win, cred: Credential) -> None:
    login = win.cli_login()
    assert login is not None and login["accessToken"] == cred.access_token
    assert login["refreshToken"] == cred.refresh_token


# ----- the CLI's names --------------------------------------------------------------------------

def h8(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


WORK = "C:\\Users\\me\\work"
SHARED = "D:\\shared"
BASE = "Claude Code-credentials"


@pytest.mark.parametrize(("env", "service"), [
    (ClaudeEnv(), BASE),
    (ClaudeEnv(user="alice"), BASE),  # no $USER account on Windows
    (ClaudeEnv(config_dir=WORK), BASE + "-" + h8(WORK)),
    (ClaudeEnv(config_dir=WORK + "\\"), BASE + "-" + h8(WORK + "\\")),  # the text, not the dir
    (ClaudeEnv(config_dir=""), BASE),
    (ClaudeEnv(config_dir="C:\\a", securestorage_dir=SHARED), BASE + "-" + h8(SHARED)),
    (ClaudeEnv(config_dir="C:\\a", securestorage_dir=""), BASE),
    (ClaudeEnv(custom_oauth_url="https://claude.fedstart.com/"),
     "Claude Code-custom-oauth-credentials"),
    (ClaudeEnv(config_dir="Cafe\u0301"), BASE + "-" + h8("Caf\u00e9")),  # NFC
])
def test_the_identity_rules_give_the_clis_target_names(env: ClaudeEnv, service: str,
                                                       tmp_path: Path) -> None:
    ident = identity(env, tmp_path)
    assert ident.target == f"{service}/claude-code-user"
    assert ident.part(0) == (f"{service}/claude-code-user#0", "claude-code-user#0")
    assert ident.part("m")[0] == f"{service}/claude-code-user#m"
    assert ident.part("p")[0] == f"{service}/claude-code-user#p"


def test_the_storage_dir_follows_the_securestorage_dir(tmp_path: Path) -> None:
    assert identity(ClaudeEnv(config_dir=str(tmp_path / "w")), tmp_path).storage_dir == \
        tmp_path / "w"
    assert identity(ClaudeEnv(config_dir=str(tmp_path / "w"), securestorage_dir=""),
                    tmp_path).storage_dir == tmp_path / ".claude"


def flag_file(on: Any) -> str:
    return json.dumps({"numStartups": 3, "cachedGrowthBookFeatures": {"tengu_windows_credman": on,
                                                                        "other": 1}})


@pytest.mark.parametrize(("files", "env", "force", "expected"), [
    ({}, ClaudeEnv(), None, False),  # no global config at all
    ({".claude.json": flag_file(True)}, ClaudeEnv(), None, True),
    ({".claude.json": flag_file(False)}, ClaudeEnv(), None, False),
    ({".claude.json": flag_file("true")}, ClaudeEnv(), None, False),  # only JSON true
    ({".claude.json": '{"cachedGrowthBookFeatures": {"tengu_windows_'}, ClaudeEnv(), None,
     False),  # broken JSON
    ({".claude.json": "null"}, ClaudeEnv(), None, False),
    ({".claude.json": flag_file(False)}, ClaudeEnv(), "1", True),  # forced
    ({}, ClaudeEnv(), "1", True),
    ({".claude.json": flag_file(False)}, ClaudeEnv(), "true", False),  # only "1" forces
    ({".claude.json": flag_file(True)}, ClaudeEnv(), "0", True),
    ({".claude.json": json.dumps({"cachedFeatureFlags": {"tengu_windows_credman": True}})},
     ClaudeEnv(), None, True),  # the older key, when the newer one is absent
    ({".claude.json": json.dumps({"cachedGrowthBookFeatures": {},
                                  "cachedFeatureFlags": {"tengu_windows_credman": True}})},
     ClaudeEnv(), None, False),  # the newer key wins even without the flag
    ({".claude/.config.json": flag_file(True), ".claude.json": flag_file(False)}, ClaudeEnv(),
     None, True),  # the legacy file first
    ({".claude/.config.json": "", ".claude.json": flag_file(True)}, ClaudeEnv(), None, True),
    ({"work/.claude.json": flag_file(True), ".claude.json": flag_file(False)},
     ClaudeEnv(config_dir="WORK"), None, True),  # CLAUDE_CONFIG_DIR holds its own
    ({".claude-custom-oauth.json": flag_file(True), ".claude.json": flag_file(False)},
     ClaudeEnv(custom_oauth_url="https://claude.fedstart.com"), None, True),
])
def test_the_flag_is_read_as_the_cli_reads_it(tmp_path: Path, files: dict[str, str],
                                              env: ClaudeEnv, force: str | None,
                                              expected: bool) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if env.config_dir == "WORK":
        env = ClaudeEnv(config_dir=str(tmp_path / "work"))
    assert credman_in_use(env, force, tmp_path) is expected


def test_an_unreadable_legacy_file_means_not_in_use(tmp_path: Path) -> None:
    (tmp_path / ".claude.json").write_text(flag_file(True))

    def read(path: Path) -> str:
        if path.name == ".config.json":
            raise PermissionError(13, "denied")
        return path.read_text()

    assert credman_in_use(ClaudeEnv(), None, tmp_path, read) is False


def test_the_switch_reads_the_config_again_only_when_it_changes(tmp_path: Path) -> None:
    config = tmp_path / ".claude.json"
    config.write_text(flag_file(False))
    reads: list[Path] = []

    def read(path: Path) -> str:
        reads.append(path)
        return path.read_text()

    switch = CredmanSwitch(ClaudeEnv(), None, tmp_path, read)
    assert switch() is False
    count = len(reads)
    assert switch() is False and len(reads) == count  # unchanged: not read again
    config.write_text(flag_file(True) + " ")
    assert switch() is True and len(reads) > count


# ----- the double is Credential Manager -------------------------------------------------------

def test_the_double_keeps_windows_limits_and_names() -> None:
    vault = CredmanDouble()
    vault.write(MAIN, "claude-code-user", b"x" * CRED_MAX_CREDENTIAL_BLOB_SIZE)
    with pytest.raises(VaultError) as too_big:
        vault.write(MAIN, "claude-code-user", b"x" * (CRED_MAX_CREDENTIAL_BLOB_SIZE + 1))
    assert too_big.value.code == RPC_X_BAD_STUB_DATA and MAIN in str(too_big.value)
    with pytest.raises(VaultError) as bad_user:
        vault.write(MAIN, "u" * 514, b"x")
    assert bad_user.value.code == ERROR_BAD_USERNAME
    vault.write(MAIN.upper(), "claude-code-user", b"y")  # the same item: names ignore case
    assert vault.targets() == [MAIN.upper()] and vault.read(MAIN) == b"y"
    assert vault.delete(MAIN) is True and vault.delete(MAIN) is False
    assert vault.read(MAIN) is None


# ----- the CLI still reads its login ------------------------------------------------------------

def test_after_each_credsync_write_the_cli_reads_the_login(win: Win) -> None:
    first = make_cred(hours(1), "one")
    assert win.cli.write(login_doc(first)) is True  # a login made by the CLI
    assert win.vault.targets() == [MAIN]
    for n, size in enumerate((0, 9000, 0, 4000, 20000, 0)):
        doc = login_doc(make_cred(hours(2 + n)), **big_section(size)) if size else None
        if doc is not None:
            assert win.cli.write({**json.loads(win.cli.raw_text() or "{}"),
                                  **{k: v for k, v in doc.items() if k != "claudeAiOauth"}})
        cred = make_cred(hours(10 + n), f"r{n}")
        assert win.store.write(cred) is True
        cli_same_login(win, cred)
        assert win.cli.read().said == "item"
        seen = win.store.read().valid
        assert seen is not None and seen.same_tokens(cred)
    assert not (win.ident.storage_dir / ".credentials.json").exists()


def test_a_document_longer_than_one_blob_survives_chunked_byte_for_byte(win: Win) -> None:
    doc = login_doc(make_cred(hours(1)), **big_section(12000), someFutureKey=[1, 2.5, None])
    win.cli.write(doc)
    pieces = [t for t in win.vault.targets() if t.startswith(MAIN + "#") and t[-1].isdigit()]
    assert len(pieces) > 1 and MAIN not in win.vault.targets()
    cred = make_cred(hours(5), "long")
    assert win.store.write(cred) is True
    text = win.cli.raw_text()
    # Exactly what the CLI itself would have written for the new login: every other key's
    # bytes as they were, non-ASCII as itself, the layout the CLI's.
    assert text == js_text({**doc, "claudeAiOauth": cred.to_json_obj()})
    meta = json.loads(win.vault.read(MAIN + "#m") or b"")
    encoded = base64.b64encode(text.encode("utf-8")).decode()
    assert meta == {"n": -(-len(encoded) // 2400), "l": len(encoded)}
    for i in range(meta["n"]):
        blob = win.vault.read(f"{MAIN}#{i}")
        assert blob == encoded[i * 2400:(i + 1) * 2400].encode()
        assert win.vault.user_of(f"{MAIN}#{i}") == f"claude-code-user#{i}"
    assert MAIN + "#p" not in win.vault.targets()  # the write marker is gone
    cli_same_login(win, cred)


def test_the_text_is_what_json_stringify_gives() -> None:
    doc = {"a": "é😀\u2028", "b": "\x00\x1f\x7f\"\\", "c": "\\u00e9", "d": [1, -0.5, 1e30]}
    assert chunks.document_text(doc) == js_text(doc)
    lone = chunks.document_text({"s": "\ud800x"})
    assert lone == '{"s":"\\ud800x"}'  # JSON.stringify escapes a lone surrogate


def test_a_shorter_document_removes_the_pieces_the_previous_count_named(win: Win) -> None:
    win.cli.write(login_doc(make_cred(hours(1)), **big_section(20000)))
    before = json.loads(win.vault.read(MAIN + "#m") or b"")["n"]
    win.vault.write(f"{MAIN}#{before + 3}", f"claude-code-user#{before + 3}", b"AAAA")  # stray
    doc = json.loads(win.cli.raw_text() or "")
    doc["mcpOAuth"] = dict(list(doc["mcpOAuth"].items())[:30])  # the CLI's next save is smaller
    win.cli.write(doc)
    cred = make_cred(hours(3), "short")
    assert win.store.write(cred) is True
    now = json.loads(win.vault.read(MAIN + "#m") or b"")["n"]
    assert 1 < now < before
    left = {t for t in win.vault.targets() if t.startswith(MAIN + "#")}
    # Pieces the count named beyond the new one are gone; the stray one is left, as the CLI
    # leaves it on a write (its log-out probes for it).
    assert left == {f"{MAIN}#{i}" for i in range(now)} | {f"{MAIN}#m", f"{MAIN}#{before + 3}"}
    cli_same_login(win, cred)
    small = make_cred(hours(4), "small")
    win.cli.write(login_doc(make_cred(hours(3.5)), **big_section(20000)))
    doc = json.loads(win.cli.raw_text() or "")
    doc.pop("mcpOAuth")
    win.cli.write(doc)  # back to one item: pieces and count removed by the CLI
    assert win.store.write(small) is True
    assert MAIN in win.vault.targets() and f"{MAIN}#m" not in win.vault.targets()
    cli_same_login(win, small)
    assert f"{MAIN}#{before + 3}" in win.vault.targets()  # still left alone, never read


def test_credsync_going_from_chunks_to_one_item_clears_them_as_the_cli_does(win: Win) -> None:
    win.cli.write(login_doc(make_cred(hours(1)), **big_section(9000)))
    doc = json.loads(win.cli.raw_text() or "")
    doc.pop("mcpOAuth")
    # A store write of a document now small: the item's own doc is what is kept, so seed a
    # small one through pieces: the CLI never leaves that, but a killed writer might.
    text = js_text(doc)
    win.cli.store_text(text + " " * 3000)  # pieces holding a small document
    assert f"{MAIN}#m" in win.vault.targets()
    cred = make_cred(hours(2), "one")
    assert win.store.write(cred) is True
    assert win.vault.targets() == [MAIN]
    cli_same_login(win, cred)


def test_pieces_that_do_not_add_up_are_a_failed_read_and_nothing_is_written(win: Win) -> None:
    win.cli.write(login_doc(make_cred(hours(1)), **big_section(9000)))
    win.vault.delete(f"{MAIN}#1")
    reading = win.store.read()
    assert reading.state is ReadState.ERROR and MAIN in reading.detail
    assert win.store.write_blocker() is not None
    writes = win.vault.calls.writes
    with pytest.raises(KeychainUnavailable, match="chunked read inconsistent"):
        win.store.write(make_cred(hours(3)))
    assert win.vault.calls.writes == writes
    assert win.cli.read().said == "failed"  # the CLI skips its writes too


# ----- the plaintext fallback -------------------------------------------------------------------

def test_no_item_the_cli_reads_the_file_and_credsync_writes_the_file(win: Win) -> None:
    path = win.ident.storage_dir / ".credentials.json"
    old = make_cred(hours(1), "file")
    path.write_text(json.dumps(login_doc(old, mcpOAuth={"k": 1})))
    reading = win.store.read()
    assert reading.valid is not None and reading.valid.same_tokens(old)
    new = make_cred(hours(2), "new")
    assert win.store.write(new) is True
    assert win.vault.targets() == []  # never creates the item: the CLI migrates itself
    assert win.cli.read().said == "file"
    cli_same_login(win, new)
    assert json.loads(path.read_text())["mcpOAuth"] == {"k": 1}


def test_with_the_switch_off_it_is_exactly_the_file(win: Win) -> None:
    stale = make_cred(hours(1), "stale")
    win.cli.write(login_doc(stale))  # left from a time the flag was on
    path = win.ident.storage_dir / ".credentials.json"
    current = make_cred(hours(2), "current")
    path.write_text(json.dumps(login_doc(current)))
    win.on[0] = False
    seen = win.store.read().valid
    assert seen is not None and seen.same_tokens(current)
    writes = win.vault.calls.writes
    new = make_cred(hours(3), "new")
    assert win.store.write(new) is True
    assert win.vault.calls.writes == writes and win.vault.calls.enumerations == 0
    assert json.loads(path.read_text())["claudeAiOauth"]["accessToken"] == new.access_token


def test_an_unparsable_item_reads_as_the_cli_reads_it_and_is_replaced(win: Win) -> None:
    win.vault.write(MAIN, "claude-code-user", b'{"claudeAiOauth": {"accessTo')
    assert win.store.read().state is ReadState.INVALID  # no file either
    path = win.ident.storage_dir / ".credentials.json"
    in_file = make_cred(hours(1), "file")
    path.write_text(json.dumps(login_doc(in_file, mcpOAuth={"k": 2})))
    reading = win.store.read()  # the CLI falls back to the file: so does credsync
    assert reading.valid is not None and reading.valid.same_tokens(in_file)
    new = make_cred(hours(2), "new")
    assert win.store.write(new) is True
    assert win.cli.read().said == "item"
    cli_same_login(win, new)
    assert json.loads(win.cli.raw_text() or "")["mcpOAuth"] == {"k": 2}


def test_without_a_credential_store_for_the_logon_the_file_is_used(win: Win) -> None:
    win.vault.unavailable = True
    path = win.ident.storage_dir / ".credentials.json"
    path.write_text(json.dumps(login_doc(make_cred(hours(1)))))
    assert win.store.read().state is ReadState.VALID
    new = make_cred(hours(2), "new")
    assert win.store.write(new) is True
    assert json.loads(path.read_text())["claudeAiOauth"]["accessToken"] == new.access_token


# ----- failures -----------------------------------------------------------------------------------

def test_a_refused_write_names_the_target_and_keeps_the_login(win: Win) -> None:
    old = make_cred(hours(1), "old")
    win.cli.write(login_doc(old))
    win.vault.fail("write", ERROR_ACCESS_DENIED, prefix=MAIN, times=-1)
    new = make_cred(hours(2), "new")
    with pytest.raises(KeychainUnavailable) as failed:
        win.store.write(new)
    text = str(failed.value)
    assert MAIN in text and "error 5" in text and "still holds the previous login" in text
    assert new.access_token not in text and new.refresh_token not in text
    cli_same_login(win, old)


def test_a_write_cut_short_among_the_pieces_puts_the_previous_login_back(win: Win) -> None:
    old = make_cred(hours(1), "old")
    win.cli.write(login_doc(old, **big_section(12000)))
    # The marker and piece 0 go through, piece 1 fails: pieces of two documents.
    win.vault.fail("write", RPC_X_BAD_STUB_DATA, prefix=MAIN + "#", skip=2, times=1)
    with pytest.raises(KeychainUnavailable, match="previous login was put back"):
        win.store.write(make_cred(hours(2), "new"))
    cli_same_login(win, old)
    assert win.store.read().valid is not None


def test_a_write_not_read_back_is_an_error(win: Win) -> None:
    win.cli.write(login_doc(make_cred(hours(1))))

    class Forgetful(CredmanDouble):
        def write(self, target: str, user: str, blob: bytes) -> None:
            self.calls.writes += 1  # says yes, keeps nothing

    forgetful = Forgetful()
    for target in win.vault.targets():
        CredmanDouble.write(forgetful, target, "claude-code-user", win.vault.read(target) or b"")
    store = WindowsCredmanStore(win.ident, forgetful, ClaudeFileStore(win.ident.storage_dir),
                                lambda: True, lock_timeout_s=0.5)
    with pytest.raises(StoreError, match="not read back"):
        store.write(make_cred(hours(2)))


def test_other_read_errors_block_writes_and_refreshes(win: Win) -> None:
    win.cli.write(login_doc(make_cred(hours(1))))
    win.vault.fail("read", ERROR_ACCESS_DENIED, prefix=MAIN, times=-1)
    reading = win.store.read()
    assert reading.state is ReadState.ERROR and MAIN in reading.detail
    assert win.store.write_blocker() is not None
    with pytest.raises(KeychainUnavailable):
        win.store.write(make_cred(hours(2)))


def test_a_document_too_large_for_credential_manager_is_refused_whole(win: Win) -> None:
    assert win.cli.write(login_doc(make_cred(hours(1)), huge="z" * 455_000)) is True
    before = {t: win.vault.read(t) for t in win.vault.targets()}
    assert len(before) > 250
    with pytest.raises(StoreError, match="too large"):
        win.store.write(make_cred(hours(2), padding="p" * 10_000))
    assert {t: win.vault.read(t) for t in win.vault.targets()} == before


def test_no_token_appears_in_logs_or_errors(win: Win, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    old = make_cred(hours(1), "old")
    win.cli.write(login_doc(old, **big_section(9000)))
    # Every write refused, and the count item unreadable after a while: both paths speak.
    win.vault.fail("write", ERROR_ACCESS_DENIED, prefix=MAIN, times=-1)
    win.vault.fail("read", ERROR_ACCESS_DENIED, prefix=MAIN + "#m", skip=6, times=-1)
    tried = [make_cred(hours(2 + n), f"try{n}") for n in range(3)]
    messages: list[str] = []
    for cred in tried:
        with pytest.raises(StoreError) as failed:
            win.store.write(cred)
        messages += [str(failed.value), win.store.read().detail]
    text = " ".join(messages) + caplog.text + repr(win.vault.calls.log)
    assert MAIN in " ".join(messages) and "error 5" in text
    for cred in (old, *tried):
        assert cred.access_token not in text and cred.refresh_token not in text
    assert "mcp-1-x" not in text  # nor any other secret of the document


# ----- watching and the lock ----------------------------------------------------------------

def test_changed_is_cheap_and_sees_every_writer(win: Win) -> None:
    win.cli.write(login_doc(make_cred(hours(1))))
    win.store.read()
    reads = win.vault.calls.reads
    assert win.store.changed() is False
    assert win.vault.calls.reads == reads  # names and LastWritten only, no blob
    win.cli.write(login_doc(make_cred(hours(2))))
    assert win.store.changed() is True
    win.store.read()
    assert win.store.changed() is False
    (win.ident.storage_dir / ".credentials.json").write_text("{}")
    assert win.store.changed() is True


def test_writes_wait_for_the_clis_lock_and_decide_inside_it(win: Win) -> None:
    old = make_cred(hours(1), "old")
    win.cli.write(login_doc(old))
    win.store.read()
    lock = storage_write_lock(win.ident.storage_dir)
    with lock.hold(1.0), pytest.raises(StoreError, match="cannot write"):
        win.store.write(make_cred(hours(2)))
    # The CLI saved a fresher login after credsync last read: the re-read inside the lock
    # sees it, and the older one is not written over it.
    fresher = make_cred(hours(8), "cli")
    win.cli.write(login_doc(fresher))
    assert win.store.write(make_cred(hours(3), "mine")) is False
    cli_same_login(win, fresher)


# ----- propagation through the reconciler -----------------------------------------------------

def test_fresh_logins_propagate_to_the_files_and_back(win: Win, tmp_path: Path) -> None:
    other_dir = tmp_path / "work"
    other_dir.mkdir()
    other = ClaudeFileStore(other_dir)
    clock = FakeClock(time.time())
    rec = Reconciler([win.store, other], Ledger(tmp_path / "state"), clock)
    cli_login = make_cred(hours(6), "cli")
    win.cli.write(login_doc(cli_login, **big_section(5000)))  # a /login in a session
    rec.round()
    copied = other.read().valid
    assert copied is not None and copied.same_tokens(cli_login)
    fresher = make_cred(hours(9), "work")
    (other_dir / ".credentials.json").write_text(json.dumps(login_doc(fresher)))
    rec.round()
    cli_same_login(win, fresher)
    assert "mcpOAuth" in json.loads(win.cli.raw_text() or "")


# ----- wiring -------------------------------------------------------------------------------------

def test_build_stores_on_windows_gives_one_credman_store_per_login(tmp_path: Path) -> None:
    from agent.config import load_settings

    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    path = write_config(tmp_path / "config.toml", dirs, tmp_path / "state", keychain=True)
    settings = load_settings(path)[0]
    vault = CredmanDouble()
    stores = build_stores(settings, backend=MemoryKeyring(), platform="win32", vault=vault)
    credman = [s for s in stores if isinstance(s, WindowsCredmanStore)]
    assert [s.config_dir for s in credman] == dirs
    assert len({s.ident.target for s in credman}) == 2
    assert not any(type(s) is ClaudeFileStore for s in stores)
    assert any(isinstance(s, KeychainStore) for s in stores)  # credsync's own copy stays
    for s in stores:
        s.close()


def test_dirs_sharing_a_securestorage_dir_share_one_store(tmp_path: Path) -> None:
    from agent.stores.windows.store import claude_credman_stores

    home, shared = tmp_path / "home", tmp_path / "shared"
    dirs = [home / ".claude", tmp_path / "work"]
    for d in (*dirs, shared):
        d.mkdir(parents=True)
    vault = CredmanDouble()
    one = claude_credman_stores(dirs, vault, home=home, env={"CLAUDE_CODE_FORCE_WINDOWS_CREDMAN":
                                                             "1"}, securestorage_dir=str(shared))
    assert len(one) == 1 and isinstance(one[0], WindowsCredmanStore)
    assert one[0].ident.storage_dir == shared and one[0].in_use() is True
    both = claude_credman_stores(dirs, vault, home=home, env={}, securestorage_dir=None)
    assert [s.ident.target for s in both if isinstance(s, WindowsCredmanStore)] == [
        MAIN, f"Claude Code-credentials-{h8(str(dirs[1]))}/claude-code-user"]
    assert all(isinstance(s, WindowsCredmanStore) and s.in_use() is False for s in both)
