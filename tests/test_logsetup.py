"""The agent's logging: a private rotating file, stderr, redaction, and a safe second setup."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.logsetup import (
    MAX_BYTES,
    PrivateRotatingFileHandler,
    redact,
    setup_logging,
    shutdown_logging,
)
from agent.credential import fingerprint_of

TOKEN = "sk-ant-oat01-" + "Abc_-123" * 12
OPAQUE = "Q" * 20 + "x9_-" * 6  # 44 base64url characters, no known prefix


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    yield
    shutdown_logging()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_log_file_is_created_private_in_a_private_dir(tmp_path: Path) -> None:
    log_file = tmp_path / "new" / "dir" / "credsync.log"
    setup_logging("info", log_file, stderr=False)
    logging.getLogger("credsync.test").info("hello")
    assert "hello" in log_file.read_text()
    assert mode(log_file) == 0o600
    assert mode(log_file.parent) == 0o700


def test_an_existing_loose_log_file_is_tightened(tmp_path: Path) -> None:
    log_file = tmp_path / "credsync.log"
    log_file.write_text("old\n")
    os.chmod(log_file, 0o644)
    setup_logging("info", log_file, stderr=False)
    assert mode(log_file) == 0o600


def test_rotation_keeps_every_file_private(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "credsync.log"
    setup_logging("info", log_file, stderr=False)
    line = "lorem ipsum " * 83  # about 1000 bytes, nothing token-like
    for _ in range(MAX_BYTES // 1000 + 50):
        logging.getLogger("credsync.test").info(line)
    backup = log_file.with_name("credsync.log.1")
    assert backup.is_file()
    assert mode(backup) == 0o600 and mode(log_file) == 0o600
    assert log_file.stat().st_size < MAX_BYTES


def test_tokens_are_redacted_from_messages_args_and_tracebacks(tmp_path: Path) -> None:
    log_file = tmp_path / "credsync.log"
    setup_logging("debug", log_file, stderr=False)
    log = logging.getLogger("credsync.test")
    log.info("token %s", TOKEN)
    log.info(f"inline {OPAQUE}")
    try:
        raise ValueError(f"server echoed {TOKEN}")
    except ValueError:
        log.exception("refresh failed")
    text = log_file.read_text()
    assert TOKEN not in text and OPAQUE not in text
    assert f"[redacted:{fingerprint_of(TOKEN)}]" in text
    assert "ValueError: server echoed [redacted:" in text


def test_redaction_leaves_ordinary_text_alone() -> None:
    ordinary = ("/home/alice/.config/credsync/config.toml fingerprint 3f2a9c0b1d "
                "expires in 28800 s " + "a" * 39)
    assert redact(ordinary) == ordinary
    assert redact("a" * 40) != "a" * 40


def test_loggers_named_after_modules_are_covered_too(tmp_path: Path) -> None:
    log_file = tmp_path / "credsync.log"
    setup_logging("info", log_file, stderr=False)
    logging.getLogger("agent.stores.claude_file").warning("from a module %s", TOKEN)
    text = log_file.read_text()
    assert "from a module [redacted:" in text and TOKEN not in text


def test_level_filters(tmp_path: Path) -> None:
    log_file = tmp_path / "credsync.log"
    setup_logging("WARNING", log_file, stderr=False)
    log = logging.getLogger("credsync.test")
    log.info("quiet")
    log.warning("loud")
    text = log_file.read_text()
    assert "loud" in text and "quiet" not in text


def test_stderr_handler_redacts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", None)
    logging.getLogger("credsync.test").info("to stderr %s", TOKEN)
    err = capsys.readouterr().err
    assert "to stderr [redacted:" in err and TOKEN not in err


def test_second_setup_replaces_the_first(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    setup_logging("info", first)
    setup_logging("info", second)
    logging.getLogger("credsync.test").info("only once")
    assert "only once" not in first.read_text()
    assert second.read_text().count("only once") == 1
    assert capsys.readouterr().err.count("only once") == 1
    assert len(logging.getLogger("credsync").handlers) == 2


def test_unwritable_log_file_falls_back_to_stderr(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    setup_logging("info", blocker / "credsync.log", stderr=False)
    logging.getLogger("credsync.test").warning("still heard")
    # A one-shot command (stderr=False) keeps its output to one line: no chatter on stderr.
    logging.getLogger("credsync.test").info("not shown")
    err = capsys.readouterr().err
    assert "cannot open log file" in err and "still heard" in err and "not shown" not in err


def test_a_failing_write_or_rotation_is_one_line_not_a_traceback_per_record(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # F7: a rotation that cannot rename (a directory where the backup goes) used to print
    # Python's "--- Logging error ---" and a traceback for every record.
    log_file = tmp_path / "credsync.log"
    (tmp_path / "credsync.log.1").mkdir()
    (tmp_path / "credsync.log.1" / "keep").write_text("")
    handler = PrivateRotatingFileHandler(log_file, maxBytes=50, backupCount=3)
    logger = logging.getLogger("credsync.test.rotation")
    logger.addHandler(handler)
    try:
        for i in range(5):
            logger.warning("record %d %s", i, "x" * 40)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err
    assert err.count("\n") == 1 and f"cannot write log file {log_file}" in err, err
