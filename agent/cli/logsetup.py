"""Logging for the agent: stderr and a private rotating file, with anything token-like redacted.

Modules log under ``credsync.*`` (or ``agent.*``, i.e. ``__name__``); both trees get the same
handlers. Redaction is defence in depth: code must already log ``fingerprint_of(token)`` only.
"""

from __future__ import annotations

import logging
import os
import sys
from io import TextIOWrapper
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TextIO

from agent.credential import redact
from agent.errors import ConfigError, StoreError
from agent.fsutil import PRIVATE_FILE, ensure_private_dir, open_regular

__all__ = ["LOGGER_NAMES", "PrivateRotatingFileHandler", "RedactingFilter", "redact",
           "setup_logging", "shutdown_logging"]

LOGGER_NAMES = ("credsync", "agent")
MAX_BYTES = 1_000_000
BACKUP_COUNT = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
# Claude tokens (sk-ant-...), and any long base64url-ish run: JWTs, opaque tokens, secrets.
class RedactingFilter(logging.Filter):
    """Rewrites a record's message, arguments, traceback and stack with secrets redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the formatter reports it via handleError
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatted here so that the cached text every handler reuses is the redacted one.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A rotating log whose files are created 0600 whatever the umask, rotations included."""

    _reported = False

    def handleError(self, record: logging.LogRecord) -> None:
        """One line on stderr, once: Python's default prints a traceback for every record that
        cannot be written (a full disk, a rotation blocked by a directory in the way)."""
        if self._reported or sys.stderr is None:
            return
        self._reported = True
        exc = sys.exc_info()[1]
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) \
            or type(exc).__name__
        sys.stderr.write(f"credsync: cannot write log file {self.baseFilename}: {reason}; "
                         "fix it or set [agent] log_file (messages go to stderr only)\n")

    def _open(self) -> TextIOWrapper:
        # Only a regular file, opened without blocking: a FIFO there (no reader) would hang
        # every command at start-up, past SIGTERM. A symlink is followed: the path is the
        # user's choice. StoreError names the file and the fix.
        fd = open_regular(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                          PRIVATE_FILE, follow=True)
        if hasattr(os, "fchmod"):  # an existing file created under another umask is tightened
            os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


class _StderrHandler(logging.StreamHandler[TextIO]):
    pass


def setup_logging(level: str, log_file: Path | None, stderr: bool = True) -> None:
    """Configure the credsync loggers; calling again replaces what an earlier call installed.

    A log file that cannot be opened is reported on stderr and skipped: a login item that
    cannot write its log should still keep the login fresh.
    """
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ConfigError([f"log level {level!r}: expected one of {', '.join(_LEVELS)}"])
    shutdown_logging()
    handlers: list[logging.Handler] = []
    problem = None
    if log_file is not None:
        try:
            handlers.append(_file_handler(log_file))
        except (OSError, StoreError) as exc:
            problem = f"{_reason(log_file, exc)}; logging to stderr only" if stderr else \
                f"{_reason(log_file, exc)}; only warnings are shown, on stderr"
    if (stderr or problem) and sys.stderr is not None:  # None under pythonw on Windows
        to_stderr = _StderrHandler(sys.stderr)
        if not stderr:  # a one-shot command's output stays its one line: warnings only
            to_stderr.setLevel(logging.WARNING)
        handlers.append(to_stderr)
    if not handlers:
        # Quiet on purpose (a one-shot command with no log file): not Python's stderr fallback.
        handlers.append(logging.NullHandler())
    redacting = RedactingFilter()
    formatter = logging.Formatter(FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redacting)
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        logger.setLevel(numeric)
        for handler in handlers:
            logger.addHandler(handler)
    if problem:
        logging.getLogger("credsync.logsetup").warning("%s", problem)


def shutdown_logging() -> None:
    """Remove and close the handlers ``setup_logging`` installed; leave anyone else's alone."""
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, (PrivateRotatingFileHandler, _StderrHandler)):
                logger.removeHandler(handler)
                handler.close()


def _reason(log_file: Path, exc: Exception) -> str:
    if isinstance(exc, StoreError):  # already names the file and the fix
        return f"cannot open log file: {exc}"
    strerror = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot open log file {log_file}: {strerror}; fix it or set [agent] log_file"


def _file_handler(log_file: Path) -> PrivateRotatingFileHandler:
    ensure_private_dir(log_file.parent)
    return PrivateRotatingFileHandler(log_file, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT,
                                      encoding="utf-8")
