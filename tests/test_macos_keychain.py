"""credsync's macOS store against the ``security`` double (agent.sim.security), the double also
playing the CLI (agent.sim.claude_keychain): after every credsync write a Claude Code session
still reads its login without a prompt; fresh logins propagate; the overflow survives; a foreign
item is reported with its fix and never overwritten blindly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import RefreshSection
from agent.credential import Credential, ReadState
from agent.errors import KeychainUnavailable, StoreError
from agent.ledger import Ledger
from agent.locks.mkdirlock import storage_write_lock
from agent.reconcile import Reconciler
from agent.refresh.coordinator import Coordinator, Kind
from agent.sim.claude_keychain import cli_login, cli_read, cli_write, seal_overflow
from agent.sim.security import SecurityDouble
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.macos.identity import ClaudeEnv, KeychainIdentity, identity
from agent.stores.macos.security import SecurityTool
from agent.stores.macos.store import MacKeychainStore, WriteRecords, cli_text
from tests.factories import make_cred

PYTHON = "/opt/homebrew/Cellar/python@3.12/3.12.7/bin/python3.12"


@dataclass
class Mac:
    double: SecurityDouble
    tool: SecurityTool
    ident: KeychainIdentity
    store: MacKeychainStore
    config_dir: Path

    def cli(self) -> dict[str, Any] | None:
        return cli_login(self.tool, self.ident)

    def item_text(self) -> str | None:
        item = self.double.item(self.ident.service, self.ident.account)
        return item.secret.decode() if item is not None else None

    def adds(self) -> int:
        return sum(1 for argv in self.double.calls() if "add-generic-password" in argv)


@pytest.fixture
def mac(tmp_path: Path) -> Iterator[Mac]:
    double = SecurityDouble(tmp_path / "keychain")
    config_dir = tmp_path / "home" / ".claude"
    config_dir.mkdir(parents=True)
    ident = identity(ClaudeEnv(user="alice"), tmp_path / "home")
    tool = SecurityTool(double.executable, timeout_s=2.0)
    store = MacKeychainStore(ident, tool, config_dir=config_dir,
                             records=WriteRecords(tmp_path / "state" / "keychain-writes.json"),
                             lock_timeout_s=0.5)
    (tmp_path / "state").mkdir()
    yield Mac(double, tool, ident, store, config_dir)


def hours(n: float) -> int:
    return int((time.time() + n * 3600) * 1000)


def login_doc(cred: Credential, **other: Any) -> dict[str, Any]:
    return {"claudeAiOauth": cred.to_json_obj(), **other}


# ----- the CLI still reads its login -----------------------------------------------------------

def test_after_each_credsync_write_the_cli_reads_the_login_without_a_prompt(mac: Mac) -> None:
    mac.double.configure(ui=True)  # a desktop: any access problem would be a dialog
    for n in range(1, 4):
        cred = make_cred(hours(n))
        assert mac.store.write(cred) is True
        login = mac.cli()
        assert login is not None and login["accessToken"] == cred.access_token
        assert login["refreshToken"] == cred.refresh_token
    assert mac.double.dialogs() == []
    item = mac.double.item(mac.ident.service, mac.ident.account)
    assert item is not None and "apple-tool:" in item.partitions


def test_the_item_holds_the_clis_exact_encoding(mac: Mac) -> None:
    cred = make_cred(hours(2))
    doc = login_doc(cred, mcpOAuth={"srv|1": {"accessToken": "x\u00e9\u2603"}})
    cli_write(mac.tool, mac.ident, doc)
    newer = make_cred(hours(3))
    assert mac.store.write(newer) is True
    text = mac.item_text()
    assert text is not None and text.isascii() and "\\u00e9\\u2603" in text
    assert text == json.dumps(json.loads(text), separators=(",", ":"))  # compact, ASCII


def test_a_fresh_cli_login_is_read_and_seen_by_the_cheap_poll(mac: Mac) -> None:
    first = make_cred(hours(2))
    cli_write(mac.tool, mac.ident, login_doc(first))
    assert mac.store.read().valid == first
    assert mac.store.changed() is False or mac.store.read().valid == first
    second = make_cred(hours(3))
    cli_write(mac.tool, mac.ident, login_doc(second))  # maybe within the same second
    assert mac.store.changed() is True
    assert mac.store.read().valid == second


def test_polling_never_decrypts_an_unchanged_item(mac: Mac) -> None:
    cred = make_cred(hours(2))
    cli_write(mac.tool, mac.ident, login_doc(cred))
    item = mac.double.item(mac.ident.service, mac.ident.account)
    assert item is not None
    # Two seconds after its mdat: settled, no same-second write can hide behind it.
    mac.store.clock = lambda: item.mdat + 5.0
    assert mac.store.read().valid == cred
    asked = mac.double.decrypts(mac.ident.service, mac.ident.account)
    for _ in range(5):
        assert mac.store.changed() is False
        assert mac.store.read().valid == cred
    assert mac.double.decrypts(mac.ident.service, mac.ident.account) == asked


def test_every_key_is_kept_and_only_the_login_changes(mac: Mac) -> None:
    other = {"mcpOAuth": {"a|1": {"accessToken": "m", "expiresAt": 1}}, "future": [1, None]}
    cli_write(mac.tool, mac.ident, login_doc(make_cred(hours(1)), **other))
    new = make_cred(hours(5))
    assert mac.store.write(new) is True
    text = mac.item_text()
    assert text is not None
    doc = json.loads(text)
    assert {k: doc[k] for k in other} == other
    assert doc["claudeAiOauth"]["accessToken"] == new.access_token


def test_never_backwards_and_never_blank(mac: Mac) -> None:
    newer = make_cred(hours(5))
    cli_write(mac.tool, mac.ident, login_doc(newer))
    assert mac.store.write(make_cred(hours(1))) is False
    with pytest.raises(StoreError):
        mac.store.write(Credential({"accessToken": "", "refreshToken": "", "expiresAt": 0}))
    login = mac.cli()
    assert login is not None and login["accessToken"] == newer.access_token


# ----- the overflow --------------------------------------------------------------------------

def _seed_overflow(mac: Mac, doc: dict[str, Any], move: list[str]) -> tuple[dict[str, Any], str]:
    main, blob = seal_overflow(doc, move)
    mac.double.put(mac.ident.overflow_service("a"), mac.ident.account, blob)
    cli_write(mac.tool, mac.ident, main)
    return main, blob


def test_overflow_grows_entries_survive_byte_for_byte(mac: Mac) -> None:
    mcp = {f"srv{i}|x": {"accessToken": f"tok{i}" * 40, "expiresAt": i} for i in range(8)}
    main, blob = _seed_overflow(mac, login_doc(make_cred(hours(1)), mcpOAuth=mcp), ["mcpOAuth"])
    new = make_cred(hours(6))
    assert mac.store.write(new) is True
    sealed = mac.double.item(mac.ident.overflow_service("a"), mac.ident.account)
    assert sealed is not None and sealed.secret.decode() == blob  # never written
    text = mac.item_text()
    assert text is not None
    assert json.loads(text)["keychainOverflow"] == main["keychainOverflow"]  # verbatim
    seen = cli_read(mac.tool, mac.ident)
    assert seen.said == "item" and not seen.partial
    assert seen.data is not None and seen.data["mcpOAuth"] == mcp
    assert seen.login is not None and seen.login["accessToken"] == new.access_token


def test_a_write_that_would_detach_login_bound_sections_is_refused(mac: Mac) -> None:
    doc = login_doc(make_cred(hours(1)), organizationUuid="org-1",
                    designOauth={"accessToken": "d" * 50})
    _seed_overflow(mac, doc, ["designOauth"])
    before = mac.item_text()
    with pytest.raises(StoreError, match="overflow"):
        mac.store.write(make_cred(hours(6)))
    assert mac.item_text() == before
    seen = cli_read(mac.tool, mac.ident)
    assert seen.data is not None and seen.data["designOauth"] == {"accessToken": "d" * 50}


def test_with_an_empty_organization_the_binding_survives_a_new_login(mac: Mac) -> None:
    doc = login_doc(make_cred(hours(1)), organizationUuid="",
                    designOauth={"accessToken": "d" * 50})
    _seed_overflow(mac, doc, ["designOauth"])
    new = make_cred(hours(6))
    assert mac.store.write(new) is True
    seen = cli_read(mac.tool, mac.ident)
    assert seen.data is not None and seen.data["designOauth"] == {"accessToken": "d" * 50}
    assert seen.login is not None and seen.login["accessToken"] == new.access_token


def test_a_sealed_login_is_read_but_left_to_the_cli(mac: Mac, tmp_path: Path) -> None:
    cred = make_cred(hours(3))
    _seed_overflow(mac, login_doc(cred, organizationUuid="org-1"), ["claudeAiOauth"])
    reading = mac.store.read()
    assert reading.valid == cred
    assert mac.store.write_blocker() is not None
    before = mac.item_text()
    with pytest.raises(StoreError):
        mac.store.write(make_cred(hours(6)))
    assert mac.item_text() == before


def test_a_document_too_long_for_one_line_is_left_to_the_cli(mac: Mac) -> None:
    big = {f"s{i}|x": {"accessToken": "z" * 300} for i in range(10)}
    # The CLI itself would pass such a document as argv (-X), not on a -i line.
    text = cli_text(login_doc(make_cred(hours(1)), mcpOAuth=big))
    mac.double.put(mac.ident.service, mac.ident.account, text)
    before, adds = mac.item_text(), mac.adds()
    with pytest.raises(StoreError, match="too long"):
        mac.store.write(make_cred(hours(6)))
    assert mac.item_text() == before and mac.adds() == adds  # nothing sent at all


# ----- items another program made --------------------------------------------------------------

def _foreign(mac: Mac, cred: Credential) -> None:
    mac.double.put(mac.ident.service, mac.ident.account, json.dumps(login_doc(cred)),
                   creator="cdhash:0123456789abcdef", apps=(PYTHON,))


def test_a_foreign_item_is_reported_with_its_fix_and_not_overwritten(mac: Mac) -> None:
    _foreign(mac, make_cred(hours(1)))
    reading = mac.store.read()
    assert reading.state is ReadState.ERROR
    assert "set-generic-password-partition-list -S apple-tool:,apple:" in reading.detail
    assert PYTHON in reading.detail
    assert mac.store.write_blocker() is not None
    before = mac.double.item(mac.ident.service, mac.ident.account)
    with pytest.raises(StoreError, match="partition-list"):
        mac.store.write(make_cred(hours(6)))
    assert mac.double.item(mac.ident.service, mac.ident.account) == before


def test_a_foreign_item_costs_one_dialog_not_one_per_poll(mac: Mac) -> None:
    mac.double.configure(ui=True, dialog_s=5.0)
    _foreign(mac, make_cred(hours(1)))
    for _ in range(4):
        assert mac.store.read().state is ReadState.ERROR
        assert mac.store.changed() is False
    with pytest.raises(StoreError, match="partition-list"):
        mac.store.write(make_cred(hours(6)))  # no second ask either
    assert len(mac.double.dialogs()) == 1


def test_credsyncs_own_recorded_write_is_repaired(mac: Mac) -> None:
    cred = make_cred(hours(1))
    assert mac.store.write(cred) is True
    written = mac.double.item(mac.ident.service, mac.ident.account)
    assert written is not None
    # The same item, re-stamped to a Python binary without changing its date (what an older
    # credsync's keyring write left, recorded): provably ours, whole document on record.
    mac.double.put(mac.ident.service, mac.ident.account, written.secret, mdat=written.mdat,
                   creator="cdhash:0123456789abcdef", apps=(PYTHON,))
    assert mac.store.read().state is ReadState.ERROR
    new = make_cred(hours(6))
    assert mac.store.write(new) is True
    login = mac.cli()
    assert login is not None and login["accessToken"] == new.access_token
    item = mac.double.item(mac.ident.service, mac.ident.account)
    assert item is not None and "apple-tool:" in item.partitions


def test_an_item_written_as_hex_is_repaired_keeping_its_keys(mac: Mac) -> None:
    cred = make_cred(hours(1))
    doc = login_doc(cred, mcpOAuth={"a|1": {"accessToken": "caf\u00e9"}})
    mac.double.put(mac.ident.service, mac.ident.account, json.dumps(doc, ensure_ascii=False))
    assert mac.store.read().state is ReadState.INVALID
    assert mac.cli() is None  # the CLI cannot parse hex
    assert mac.store.write(cred) is True
    seen = cli_read(mac.tool, mac.ident)
    assert seen.login is not None and seen.login["accessToken"] == cred.access_token
    assert seen.data is not None and seen.data["mcpOAuth"] == doc["mcpOAuth"]


# ----- a keychain that cannot answer --------------------------------------------------------------

def test_a_locked_keychain_is_reported_never_prompted_never_written(mac: Mac) -> None:
    cli_write(mac.tool, mac.ident, login_doc(make_cred(hours(1))))
    mac.double.configure(locked=True)  # over SSH: no desktop, no dialog
    reading = mac.store.read()
    assert reading.state is ReadState.ERROR and "locked" in reading.detail
    adds = mac.adds()
    with pytest.raises(KeychainUnavailable):
        mac.store.write(make_cred(hours(6)))
    assert mac.adds() == adds and mac.double.dialogs() == []


def test_a_locked_keychain_on_a_desktop_costs_one_dialog(mac: Mac) -> None:
    cli_write(mac.tool, mac.ident, login_doc(make_cred(hours(1))))
    mac.double.configure(locked=True, ui=True, dialog_s=5.0)
    for _ in range(3):
        assert "locked" in mac.store.read().detail
        assert mac.store.changed() is False
    with pytest.raises(KeychainUnavailable):
        mac.store.write(make_cred(hours(6)))
    assert len(mac.double.dialogs()) == 1  # the first look; then nothing until it changes


def test_a_slow_keychain_is_an_error_and_no_blind_retry(mac: Mac) -> None:
    cli_write(mac.tool, mac.ident, login_doc(make_cred(hours(1))))
    mac.double.configure(delay_s=3.0)  # past the 2 s deadline
    started = time.monotonic()
    assert mac.store.read().state is ReadState.ERROR
    with pytest.raises(StoreError):
        mac.store.write(make_cred(hours(6)))
    assert time.monotonic() - started < 10
    assert mac.adds() <= 1


def test_the_clis_write_lock_is_honoured(mac: Mac) -> None:
    cli_write(mac.tool, mac.ident, login_doc(make_cred(hours(1))))
    adds = mac.adds()
    # A CLI session is writing.
    with storage_write_lock(mac.config_dir).hold(1.0), pytest.raises(StoreError):
        mac.store.write(make_cred(hours(6)))
    assert mac.adds() == adds


def test_no_secret_in_the_double_s_call_log(mac: Mac) -> None:
    cred = make_cred(hours(2))
    mac.store.write(cred)
    log = json.dumps(mac.double.calls())
    assert cred.access_token not in log and cred.refresh_token not in log
    assert cli_text(login_doc(cred)).encode().hex() not in log


# ----- with the refresh coordinator ---------------------------------------------------------------

class CountingRefresher:
    def __init__(self) -> None:
        self.sent = 0

    def refresh(self, cred: Credential) -> Any:
        self.sent += 1
        raise AssertionError("nothing may be sent while the CLI's item cannot be written")


def test_no_refresh_while_the_clis_item_cannot_take_a_new_login(mac: Mac, tmp_path: Path) -> None:
    _foreign(mac, make_cred(hours(1)))
    clock = FakeClock(time.time() + 2 * 3600)  # the file's login is due
    file_store = ClaudeFileStore(mac.config_dir)
    (mac.config_dir / ".credentials.json").write_text(
        json.dumps(login_doc(make_cred(int((clock.now() + 600) * 1000)))))
    refresher = CountingRefresher()
    writer = Reconciler([file_store, mac.store], Ledger(tmp_path / "state2"), clock)
    coord = Coordinator(RefreshSection(jitter=0), writer, [mac.config_dir], refresher, clock,
                        lock_wait_s=1, cli_lock_wait_s=0.5)
    outcome = coord.run(force=True)
    assert outcome.kind is Kind.BLOCKED
    assert "partition-list" in outcome.message
    assert refresher.sent == 0
