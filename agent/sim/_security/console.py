"""One invocation's streams and store: what every command writes to and reads from.

Command lines arrive as ``str`` decoded with ``surrogateescape`` (argv, and ``-i`` lines alike),
so any byte a caller passes comes back out unchanged through ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from agent.sim._security import oserr
from agent.sim._security.state import Store

PASSWORD_MAX = 128  # _PASSWORD_LEN: getpass keeps 128 bytes [seen: antifailure PR #420]


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def cooked(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class Stdin:
    """``getchar(3)`` over stdin, shared by the ``-i`` loop and the password prompts."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def getchar(self) -> int:
        byte = self._stream.read(1)
        return byte[0] if byte else -1

    def readline(self, size: int) -> tuple[bytes | None, bool]:
        """Apple's ``readline(buffer, size)``: at most ``size - 1`` bytes, the newline dropped.

        A full buffer stops the read *before* the rest of the line (and its newline), which the
        next call returns as a line of its own. EOF before a newline loses the partial line
        [Apple readline.c]. The flag says the line was cut by the buffer.
        """
        line = bytearray()
        while True:
            if len(line) == size - 1:
                return bytes(line), True
            ch = self.getchar()
            if ch < 0:
                return None, False
            if ch == 0x0A:
                return bytes(line), False
            line.append(ch)

    def getpass(self, prompt: str, err: BinaryIO) -> bytes:
        # Without a controlling terminal getpass prompts on stderr and reads stdin, keeping 128
        # bytes of the line [seen: antifailure PR #420]. The double never opens /dev/tty, so a
        # test run from a terminal cannot hang on it; EOF gives "" [inferred].
        err.write(raw(prompt))
        err.flush()
        line = bytearray()
        while (ch := self.getchar()) >= 0 and ch != 0x0A:
            if len(line) < PASSWORD_MAX:
                line.append(ch)
        return bytes(line)


@dataclass
class Tool:
    store: Store
    out: BinaryIO
    err: BinaryIO
    stdin: Stdin
    quiet: bool = False
    verbose: bool = False

    def error(self, message: str) -> None:
        """``sec_error``: the program name, the message, a newline, on stderr (unbuffered)."""
        self.err.write(b"security: " + raw(message) + b"\n")
        self.err.flush()

    def perror(self, what: str, status: int) -> None:
        self.error(f"{what}: {oserr.errstr(status)}")

    def note(self, text: str) -> None:
        """A bare ``fprintf(stderr, ...)``."""
        self.err.write(raw(text))
        self.err.flush()

    def note_line(self, text: str) -> None:
        self.note(text + "\n")
