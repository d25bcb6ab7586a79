"""``main``: global options, one command or the ``-i`` loop [Apple security.c, readline.c].

``-i`` reads stdin with ``readline(buffer, MAX_LINE_LEN)``: a 4096-byte buffer, so at most 4095
bytes of a line. A longer line runs cut, and its rest runs as the next command; a line of
exactly 4095 bytes runs whole and leaves its newline, an empty command that succeeds and so
resets the status ``security -i`` exits with (that of the last command) [seen: go-keyring #153,
clauth #66 measured 4096/4097/4098-byte lines]. Lines are split by Apple's own rules: blanks
separate words, a word may be quoted with ``"`` or ``'`` (only at its start), a backslash takes
the next byte literally, at most 32 words.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from agent.sim._security import add, items, keychains, oserr, table
from agent.sim._security.console import Stdin, Tool, cooked, raw
from agent.sim._security.getopt import GetOpt, redact
from agent.sim._security.state import DoubleError, Store

MAX_ARGS = 32
CUT_TAIL = "<cut-tail>"  # how calls() records the rest of a cut line (it may be secret)

Command = Callable[[Tool, Sequence[str]], int]


def split_line(line: bytes) -> list[bytes]:
    """``split_line`` of security.c, state for state."""
    words: list[bytes] = []
    word = bytearray()
    state, quote = "skip", 0
    for ch in line:
        if state == "skip":
            if ch in b" \t\n\v\f\r":
                continue
            if ch in b"\"'":
                state, quote = "quoted", ch
                continue
            state = "word"
        if state == "word_escaped":
            word.append(ch)
            state = "word"
        elif state == "quoted_escaped":
            word.append(ch)
            state = "quoted"
        elif ch == 0x5C:
            state += "_escaped"
        elif (state == "word" and ch in b" \t\n\v\f\r") or (state == "quoted" and ch == quote):
            words.append(bytes(word))
            word.clear()
            state = "skip"
            if len(words) >= MAX_ARGS:
                return words
        else:
            word.append(ch)
    if state != "skip":
        words.append(bytes(word))
    return words


def help_command(tool: Tool, argv: Sequence[str]) -> int:
    if len(argv) <= 1:
        for name, text, internal in table.COMMANDS:
            if not internal:
                tool.out.write(raw(f"    {name:<36} {text}\n"))
        return 0
    for typed in argv[1:]:
        found = table.match_command(typed)
        if found is None:
            tool.error(f"{argv[0]}: no such command: {typed}")
            return 1
        tool.out.write(raw(f"Usage: {found} {_usage(found)}\n"))
    return 0


def error_command(tool: Tool, argv: Sequence[str]) -> int:
    for word in argv[1:]:
        if word == "error":
            continue
        try:
            code = int(word, 0) if word.strip() else 0
        except ValueError:
            code = 0  # strtoul stops at the first bad digit [inferred: whole word or 0]
        signed = (code + 2**31) % 2**32 - 2**31
        tool.out.write(raw(f"Error: 0x{signed & 0xFFFFFFFF:08X} {signed} "
                           f"{oserr.errstr(signed)}\n"))
    return 1  # display_error_code always returns 1 [Apple display_error_code.c]


def not_emulated(tool: Tool, argv: Sequence[str]) -> int:
    tool.error(f"{argv[0]}: not emulated by the test double")
    return 1


HANDLERS: dict[str, Command] = {
    "help": help_command,
    "error": error_command,
    "find-generic-password": items.find_generic_password,
    "delete-generic-password": items.delete_generic_password,
    "dump-keychain": items.dump_keychain,
    "add-generic-password": add.add_generic_password,
    "set-generic-password-partition-list": keychains.set_generic_password_partition_list,
    "show-keychain-info": keychains.show_keychain_info,
    "lock-keychain": keychains.lock_keychain,
    "unlock-keychain": keychains.unlock_keychain,
    "list-keychains": keychains.list_keychains,
    "default-keychain": keychains.default_keychain,
    "login-keychain": keychains.login_keychain,
}


def _usage(name: str) -> str:
    return table.USAGES.get(name, "(usage text not reproduced by the test double)")


def recorded(argv: Sequence[str]) -> list[str]:
    """A command line as calls() keeps it: every secret option argument replaced."""
    if not argv:
        return []
    name = table.match_command(argv[0])
    if name in table.SECRET_OPTIONS:
        optstring, letters = table.SECRET_OPTIONS[name]
        return redact(argv, optstring, letters)
    return list(argv)


def _record(store: Store, words: list[str]) -> None:
    with store.transaction() as state:
        state.calls.append(words)


def execute_command(tool: Tool, argv: Sequence[str]) -> int:
    if not argv:
        return 0
    name = table.match_command(argv[0])
    if name is None:
        tool.error(f'unknown command "{argv[0]}"')
        return 1
    if tool.verbose:
        tool.note(name + "".join(f' "{word}"' for word in argv[1:]) + "\n")
    delay = tool.store.read().config.delay_s
    if delay > 0:
        time.sleep(delay)  # a slow keychain: every command waits before it answers
    result = HANDLERS.get(name, not_emulated)(tool, argv)
    if result == 2:
        tool.note(f"Usage: {name} {_usage(name)}\n        {table.help_line(name)}\n")
    return result


def interactive(tool: Tool, prompt: str) -> int:
    show_prompt = os.isatty(0)  # the prompt only for a terminal [Apple security.c]
    size = tool.store.read().config.line_buffer
    result, after_cut = 0, False
    while True:
        if show_prompt:
            tool.note(prompt)
        line, cut = tool.stdin.readline(size)
        if line is None:
            return result
        words = [cooked(w) for w in split_line(line.split(b"\x00", 1)[0])]
        _record(tool.store, [CUT_TAIL, f"{len(line)} bytes"] if after_cut else recorded(words))
        after_cut = cut
        result = execute_command(tool, words)
        if result == -1:
            return 0  # a command's -1 ends the loop with success
        if result and not tool.quiet:
            tool.note(f"{words[0]}: returned {result}\n")


def usage(tool: Tool) -> int:
    tool.out.write(
        b"Usage: security [-h] [-i] [-l] [-p prompt] [-q] [-v] [command] [opt ...]\n"
        b"    -i    Run in interactive mode.\n"
        b"    -l    Run /usr/bin/leaks -nocontext before exiting.\n"
        b'    -p    Set the prompt to "prompt" (implies -i).\n'
        b"    -q    Be less verbose.\n"
        b"    -v    Be more verbose about what's going on.\n"
        b"security commands are:\n")
    help_command(tool, ["help"])
    return 2


def main(tool: Tool, argv: Sequence[str]) -> int:
    words = ["security", *argv[1:]]
    parser = GetOpt(words, "hilp:qvR", tool.note_line)
    do_help = do_interactive = False
    prompt = "security> "
    for letter, value in parser:
        if letter == "?":
            _record(tool.store, list(argv[1:]))
            return usage(tool)
        do_help |= letter == "h"
        do_interactive |= letter in "ip"
        prompt = value if letter == "p" and value is not None else prompt
        tool.quiet |= letter == "q"
        tool.verbose |= letter == "v"
    operands = words[parser.optind:]
    _record(tool.store, words[1:parser.optind] + recorded(operands))
    if do_help:
        return help_command(tool, [words[parser.optind - 1], *operands])
    if operands:
        return execute_command(tool, operands)
    if do_interactive:
        return interactive(tool, prompt)
    return usage(tool)


def run(argv: Sequence[str], state_dir: str, stdin: BinaryIO | None = None,
        stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> int:
    """The executable's entry point: never a traceback, always an exit status."""
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    tool = Tool(Store(Path(state_dir)), out, err,
                Stdin(stdin or sys.stdin.buffer))
    try:
        result = main(tool, argv)
        out.flush()
    except DoubleError as exc:
        tool.error(f"test double: {exc}")
        result = 1
    except BrokenPipeError:
        result = 1  # the reader went away: nothing left to say
    except KeyboardInterrupt:
        result = 130
    except Exception as exc:  # a double must fail like a tool, not with a traceback
        tool.error(f"test double: internal error ({type(exc).__name__})")
        result = 1
    return oserr.exit_status(result)
