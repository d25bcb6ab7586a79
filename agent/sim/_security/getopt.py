"""BSD ``getopt(3)`` as ``security`` uses it, and the redaction of secrets from a command line.

BSD getopt stops at the first operand (no GNU reordering): in ``find-generic-password svc -w``
the ``-w`` is a keychain name. ``--`` ends the options. A leading ``:`` in the option string
silences the messages and reports a missing argument as ``:`` [FreeBSD/Darwin Libc getopt.c].
Messages name the subcommand (``find-generic-password: illegal option -- x``) [seen: OS X 10.7
output; today's macOS may name ``security``].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence


class GetOpt:
    """Iterate ``(letter, argument)``; ``?`` for an unknown letter, ``:`` or ``?`` for a missing
    argument (``optopt`` says which letter). ``optind`` indexes the first operand afterwards."""

    def __init__(self, argv: Sequence[str], optstring: str,
                 warn: Callable[[str], None] | None = None) -> None:
        self.argv = argv
        self.optstring = optstring
        self.optind = 1
        self.optopt = ""
        self.arg_index: int | None = None  # where the last argument came from (for redaction)
        self.arg_attached = False  # it was the rest of its option word ("-wpw")
        self._warn = warn
        self._place = ""

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        while (item := self._next()) is not None:
            yield item

    def _next(self) -> tuple[str, str | None] | None:
        if not self._place:
            if self.optind >= len(self.argv) or not self.argv[self.optind].startswith("-"):
                return None
            word = self.argv[self.optind]
            if word == "--":
                self.optind += 1
                return None
            if word == "-":
                return None  # a lone "-" is an operand here (no command takes "-")
            self._place = word[1:]
        letter, self._place = self._place[0], self._place[1:]
        self.optopt = letter
        spec = self.optstring.find(letter) if letter != ":" else -1
        if spec < 0:
            if not self._place:
                self.optind += 1
            self._complain(f"illegal option -- {letter}")
            return "?", None
        if self.optstring[spec + 1:spec + 2] != ":":
            if not self._place:
                self.optind += 1
            return letter, None
        return self._argument(letter)

    def _argument(self, letter: str) -> tuple[str, str | None]:
        self.arg_attached = bool(self._place)
        if self._place:
            value, self._place = self._place, ""
            self.arg_index = self.optind
        elif self.optind + 1 < len(self.argv):
            self.optind += 1
            value = self.argv[self.optind]
            self.arg_index = self.optind
        else:
            self.optind += 1
            if self.optstring.startswith(":"):
                return ":", None
            self._complain(f"option requires an argument -- {letter}")
            return "?", None
        self.optind += 1
        return letter, value

    def _complain(self, message: str) -> None:
        if self._warn is not None and not self.optstring.startswith(":"):
            self._warn(f"{self.argv[0]}: {message}")


def redact(argv: Sequence[str], optstring: str, secret_letters: str) -> list[str]:
    """``argv`` with the arguments of ``secret_letters`` replaced by ``<secret>``.

    Parsed exactly as the command parses it, so ``-Uw pw``, ``-wpw`` and ``-X`` given last are
    all found; an attached argument keeps its option (``-w<secret>``).
    """
    out = list(argv)
    parser = GetOpt(argv, optstring)
    for letter, value in parser:
        index = parser.arg_index
        if letter in secret_letters and index is not None and value is not None:
            word = argv[index]
            out[index] = word[: len(word) - len(value)] + "<secret>" if parser.arg_attached \
                else "<secret>"
        parser.arg_index = None
    return out
