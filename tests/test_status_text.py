"""``credsync status``'s text view (F15): plain words, and nothing from outside can forge a row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.status import Status, StoreStatus, duration, render_text
from agent.sim.server import OAuthServer
from tests.agentproc import credsync, write_config
from tests.factories import write_doc


def status(stores: list[StoreStatus], **extra: dict[str, object]) -> Status:
    return Status("/home/u/.config/credsync/config.toml", False, None, "/state", "none", None,
                  stores, dict(extra))


def row(name: str, state: str = "error", detail: str = "", kind: str = "claude-file"
        ) -> StoreStatus:
    return StoreStatus(name, kind, "/x", state, None, None, detail)


def test_extra_sections_are_plain_words_not_python_reprs() -> None:
    text = render_text(status([], refresh={
        "enabled": True, "state": "ok", "lifetime_s": 28800.0, "lifetime_source": "nominal",
        "next_refresh_at": "2026-12-02T10:19:09Z"}, login_item={
        "installed": False, "enabled": False, "active": None, "detail": "not installed"}))
    refresh = next(line for line in text.splitlines() if line.startswith("refresh:"))
    assert refresh == ("refresh: enabled=on, state=ok, lifetime=8 h, lifetime_source=nominal, "
                       "next_refresh_at=2026-12-02T10:19:09Z")
    item = next(line for line in text.splitlines() if line.startswith("login_item:"))
    assert item == "login_item: installed=no, enabled=off, detail=not installed"
    assert "True" not in text and "False" not in text and "28800.0" not in text


@pytest.mark.parametrize(("seconds", "words"), [
    (28800.0, "8 h"), (9000, "2.5 h"), (5400, "90 min"), (45, "45 s"), (0.5, "0.5 s"),
    (3 * 86400, "3 d"), (120, "2 min")])
def test_durations(seconds: float, words: str) -> None:
    assert duration(seconds) == words


def test_control_characters_in_names_and_details_cannot_forge_rows() -> None:
    forged = "file:/home/u/evil\n  file:/home/u/.claude  in-sync     abc  2030-01-01T00:00:00Z"
    text = render_text(status([row(forged, detail="bad\r\x1b[32mfine\u202e"),
                               row("file:/home/u/.claude", "missing", "no file")]))
    lines = text.splitlines()
    assert len(lines) == 6 and lines[3] == "stores:"
    assert lines[4].startswith("  file:/home/u/evil\\n  file:/home/u/.claude  in-sync")
    assert lines[4].endswith("bad\\r\\x1b[32mfine\\u202e")
    assert "\x1b" not in text and "\r" not in text


def test_the_login_line_names_the_next_step() -> None:
    assert "log in with `claude`" in render_text(status([]))


def test_a_keychain_without_a_session_bus_gets_a_hint() -> None:
    detail = ("keychain read: SecretServiceNotAvailableException: Environment variable "
              "DBUS_SESSION_BUS_ADDRESS is unset")
    text = render_text(status([row("keychain", detail=detail, kind="keychain")]))
    assert text.splitlines()[-1].endswith(
        "is unset (no desktop session: run inside a desktop login, or set "
        "[claude] keychain = false)")


@pytest.mark.integration
def test_status_of_a_config_dir_named_with_a_newline_keeps_one_row_per_store(
        tmp_path: Path) -> None:
    with OAuthServer(access_lifetime_s=8 * 3600) as server:
        good, odd = tmp_path / "good", tmp_path / "odd\n  keychain  in-sync"
        write_doc(good, {"claudeAiOauth": server.issue_login()})
        odd.mkdir()
        config = write_config(tmp_path / "config.toml", [good, odd], tmp_path / "state",
                              keychain=False, refresh={"token_url": server.url})
        out = credsync(["status", "--config", str(config)])
        data = json.loads(credsync(["status", "--json", "--config", str(config)]).stdout)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    stores = lines[lines.index("stores:") + 1:]
    assert len(stores) == len(data["stores"]) == 2, out.stdout
    assert any("odd\\n  keychain  in-sync" in line for line in stores)
