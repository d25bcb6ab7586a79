"""The /usr/bin/security double, driven as the store and Claude Code drive it: real processes."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sim._security.tool import split_line
from agent.sim.security import SecurityDouble

pytestmark = pytest.mark.integration

SVC = "Claude Code-credentials"
PYTHON = "/opt/homebrew/bin/python3.12"
# Claude Code 2.1.332's parsers of the attribute output
KEYCHAIN_RE = re.compile(r'^keychain: "(/[^"\\\n]+)"(?:\n|$)')
MDAT_RE = re.compile(r'^ +"mdat"<timedate>=\S+ +"(\d{14})Z', re.M)
STAMP = 1764663830  # 2025-12-02 08:23:50 UTC


@pytest.fixture()
def kc(tmp_path: Path) -> SecurityDouble:
    return SecurityDouble(tmp_path / "kc")


def run(kc: SecurityDouble, *args: str, stdin: bytes | None = None,
        timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(kc.executable), *args], input=stdin, capture_output=True,
                          timeout=timeout, check=False)


def add_line(secret_hex: str, account: str = "alice") -> str:
    return f'add-generic-password -U -a "{account}" -s "{SVC}" -X "{secret_hex}"'


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# -- formats ---------------------------------------------------------------------------------
def test_attributes_match_claude_codes_parsers_and_apples_format(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "{}", cdat=STAMP - 60, mdat=STAMP)
    done = run(kc, "find-generic-password", "-a", "alice", "-s", SVC)
    assert done.returncode == 0 and done.stderr == b""
    text = done.stdout.decode()
    match = KEYCHAIN_RE.match(text)
    assert match is not None and match.group(1) == kc.keychain_path
    assert kc.keychain_path == "/Users/alice/Library/Keychains/login.keychain-db"
    mdat = MDAT_RE.search(text)
    assert mdat is not None and mdat.group(1) == "20251202082350"
    assert text.splitlines()[:6] == [
        'keychain: "/Users/alice/Library/Keychains/login.keychain-db"', "version: 512",
        'class: "genp"', "attributes:", f'    0x00000007 <blob>="{SVC}"',
        "    0x00000008 <blob>=<NULL>"]
    assert ('    "mdat"<timedate>=0x32303235313230323038323335305A00  "20251202082350Z\\000"'
            in text.splitlines())
    assert f'    "svce"<blob>="{SVC}"' in text and '    "acct"<blob>="alice"' in text
    assert kc.decrypts(SVC, "alice") == 0


@pytest.mark.parametrize(("secret", "shown"), [
    (b"s3cret {\"a\":1} \\", b"s3cret {\"a\":1} \\\n"),  # isprint: backslash and quote are text
    (b"\x00\xffA", b"00ff41\n"),
    (b"line\nbreak", b"6c696e650a627265616b\n"),
    ("é".encode(), b"c3a9\n"),  # C locale: no byte above 0x7E is printable
])
def test_w_prints_text_or_lower_case_hex(kc: SecurityDouble, secret: bytes, shown: bytes) -> None:
    kc.put(SVC, "alice", secret)
    done = run(kc, "find-generic-password", "-a", "alice", "-w", "-s", SVC)
    assert (done.returncode, done.stdout, done.stderr) == (0, shown, b"")


def test_g_prints_attributes_and_the_password_on_stderr(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", b"\x00\xffA")
    done = run(kc, "find-generic-password", "-ga", "alice", "-s", SVC)
    assert done.returncode == 0 and KEYCHAIN_RE.match(done.stdout.decode())
    assert done.stderr == b'password: 0x00FF41  "\\000\\377A"\n'


# -- status codes ----------------------------------------------------------------------------
def test_status_codes_44_36_45_51(kc: SecurityDouble) -> None:
    missing = run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w")
    assert missing.returncode == 44 and missing.stdout == b""
    assert missing.stderr == (b"security: SecKeychainSearchCopyNext: The specified item could "
                              b"not be found in the keychain.\n")
    assert run(kc, "add-generic-password", "-a", "alice", "-s", SVC, "-w", "one").returncode == 0
    duplicate = run(kc, "add-generic-password", "-a", "alice", "-s", SVC, "-w", "two")
    assert duplicate.returncode == 45 and b"already exists in the keychain" in duplicate.stderr
    kc.configure(locked=True)
    locked = run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w")
    assert (locked.returncode, locked.stdout, locked.stderr) == (36, b"", b"")
    # attributes are read while locked, and without a prompt
    assert run(kc, "find-generic-password", "-a", "alice", "-s", SVC).returncode == 0
    wrong = run(kc, "unlock-keychain", "-p", "not-it")
    assert wrong.returncode == 51 and b"passphrase you entered is not correct" in wrong.stderr
    assert run(kc, "unlock-keychain", "-p", "password").returncode == 0
    assert run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w").stdout == b"one\n"
    assert kc.dialogs() == []


def test_show_keychain_info_needs_the_keychain_unlocked(kc: SecurityDouble) -> None:
    done = run(kc, "show-keychain-info")
    assert (done.returncode, done.stderr) == (0, b'Keychain "<NULL>" no-timeout\n')
    kc.configure(locked=True)
    done = run(kc, "show-keychain-info", kc.keychain_path)
    assert done.returncode == 36
    assert done.stderr == (f"security: SecKeychainCopySettings {kc.keychain_path}: User "
                           "interaction is not allowed.\n").encode()


# -- access ----------------------------------------------------------------------------------
def test_foreign_item_read_is_refused_without_ui_and_asks_with_ui(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "{}", creator="cdhash:0123abcd", apps=(PYTHON,))
    done = run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w")
    assert (done.returncode, done.stdout, done.stderr) == (36, b"", b"")
    assert kc.dialogs() == [] and kc.decrypts(SVC, "alice") == 1
    kc.configure(ui=True, dialog_s=0.2)
    done = run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w")
    assert (done.returncode, done.stdout) == (128, b"")
    assert [(d["op"], d["service"], d["account"]) for d in kc.dialogs()] == [
        ("access", SVC, "alice")]
    assert kc.decrypts(SVC, "alice") == 2


def test_always_allow_adds_the_tool_and_its_partition(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "{}", creator="cdhash:0123abcd", apps=(PYTHON,))
    kc.configure(ui=True, dialog_answer="always")
    assert run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w").stdout == b"{}\n"
    item = kc.item(SVC, "alice")
    assert item is not None and "/usr/bin/security" in item.apps
    assert "apple-tool:" in item.partitions
    kc.configure(ui=False)
    assert run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w").returncode == 0


def test_a_double_killed_in_a_dialog_leaves_the_keychain_whole(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "{}", creator="cdhash:0123abcd", apps=(PYTHON,))
    kc.configure(ui=True, dialog_s=30)
    proc = subprocess.Popen([str(kc.executable), "find-generic-password", "-a", "alice", "-s",
                             SVC, "-w"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: kc.dialogs())
    finally:
        proc.kill()
        out, _err = proc.communicate(timeout=10)
    assert out == b"" and proc.returncode == -9
    state = json.loads((kc.root / "state" / "db.json").read_text())
    assert [i["service"] for i in state["items"]] == [SVC] and len(state["dialogs"]) == 1
    assert run(kc, "find-generic-password", "-a", "alice", "-s", SVC).returncode == 0


def test_partition_only_mismatch_asks_for_the_password_on_a_read(kc: SecurityDouble) -> None:
    # a CLI item later rewritten by keyring: ACL still trusts security, partition is keyring's
    kc.put(SVC, "alice", "{}", creator="cdhash:0123abcd")
    assert run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w").returncode == 36
    kc.configure(ui=True, dialog_answer="deny")
    assert run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w").returncode == 51
    assert [d["op"] for d in kc.dialogs()] == ["partition"]


# -- writes ----------------------------------------------------------------------------------
def test_new_item_is_stamped_to_the_writer(kc: SecurityDouble) -> None:
    kc.configure(clock_offset_s=86400)
    before = time.time()
    assert run(kc, "add-generic-password", "-a", "alice", "-s", SVC, "-w", "x").returncode == 0
    item = kc.item(SVC, "alice")
    assert item is not None and item.partitions == ("apple-tool:", "apple:")
    assert item.apps == ("/usr/bin/security",) and item.creator == "apple-tool:"
    assert before + 86400 - 1 <= item.mdat <= time.time() + 86400 and item.cdat == item.mdat


def test_u_restamps_partitions_keeps_cdat_and_apps(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "old", creator="cdhash:0123abcd", apps=(PYTHON,), cdat=STAMP - 99,
           mdat=STAMP)
    kc.configure(foreign_write="allow")
    done = run(kc, "-i", stdin=(add_line("7b7d") + "\n").encode())
    assert (done.returncode, done.stderr) == (0, b"")
    item = kc.item(SVC, "alice")
    assert item is not None and item.secret == b"{}"
    assert item.partitions == ("apple-tool:", "apple:") and item.creator == "apple-tool:"
    assert item.cdat == STAMP - 99 and item.mdat > STAMP
    assert item.apps == (PYTHON,)  # Item.cpp copies the old ACL: keyring's app stays trusted


def test_refused_u_falls_through_to_a_create_and_exits_45(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "old", creator="cdhash:0123abcd", mdat=STAMP)
    done = run(kc, "add-generic-password", "-U", "-a", "alice", "-s", SVC, "-X", "7B7D")
    assert done.returncode == 45
    assert done.stderr.decode().splitlines() == [
        "security: SecKeychainItemModifyContent: The user name or passphrase you entered is "
        "not correct.",
        "security: SecKeychainItemCreateFromContent (<default>): The specified item already "
        "exists in the keychain."]
    item = kc.item(SVC, "alice")
    assert item is not None and (item.secret, item.mdat) == (b"old", STAMP)
    assert kc.dialogs() == []


def test_set_partition_list_with_the_password(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "{}", creator="cdhash:0123abcd")
    base = ["set-generic-password-partition-list", "-S", "apple-tool:,apple:", "-a", "alice",
            "-s", SVC]
    wrong = run(kc, *base, "-k", "nope")
    assert wrong.returncode == 1 and b"SecKeychainUnlock: The user name" in wrong.stderr
    prompted = run(kc, *base, stdin=b"")  # no -k, no tty: getpass reads stdin, EOF
    assert prompted.returncode == 1 and prompted.stderr.startswith(
        b"password to unlock default: security: SecKeychainUnlock:")
    done = run(kc, *base, "-k", "password")
    assert done.returncode == 0 and KEYCHAIN_RE.match(done.stdout.decode())
    item = kc.item(SVC, "alice")
    assert item is not None and item.partitions == ("apple-tool:", "apple:")
    assert run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w").stdout == b"{}\n"
    assert "nope" not in json.dumps(kc.calls()) and "<secret>" in kc.calls()[0]


def test_delete_prints_the_item_then_deletes_it(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "{}")
    done = run(kc, "delete-generic-password", "-a", "alice", "-s", SVC)
    assert done.returncode == 0 and KEYCHAIN_RE.match(done.stdout.decode())
    assert done.stderr == b"password has been deleted.\n" and kc.item(SVC, "alice") is None
    assert run(kc, "delete-generic-password", "-a", "alice", "-s", SVC).returncode == 44


def test_dump_keychain_a_shows_the_partition_list_without_decrypting(
        kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "{}", creator="cdhash:0123abcd", apps=(PYTHON,))
    kc.configure(ui=True)
    done = run(kc, "dump-keychain", "-a", kc.keychain_path)
    text = done.stdout.decode()
    assert done.returncode == 0 and "access: 5 entries" in text
    assert ("        authorizations (1): partition_id\n        don't-require-password\n"
            "        description: cdhash:0123abcd\n") in text
    assert f"            0: {PYTHON} (OK)\n" in text
    assert kc.decrypts(SVC, "alice") == 0 and kc.dialogs() == []


# -- -i and Apple's line buffer ----------------------------------------------------------------
def hex_bytes(digits: str) -> bytes:
    """What ``-X`` stores: an odd count of digits gets a leading zero nibble."""
    return bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)


def padded_hex(total: int) -> str:
    """Hex that makes add_line exactly ``total`` bytes long (without its newline)."""
    return "ab" * ((total - len(add_line(""))) // 2) + "a" * ((total - len(add_line(""))) % 2)


@pytest.mark.parametrize(("buffer", "whole"), [(4032, 4030), (4032, 4031), (4096, 4094),
                                               (4096, 4095)])
def test_i_runs_a_line_that_fits(kc: SecurityDouble, buffer: int, whole: int) -> None:
    kc.configure(line_buffer=buffer)
    line = add_line(padded_hex(whole))
    assert len(line) == whole
    done = run(kc, "-i", stdin=(line + "\n").encode())
    assert (done.returncode, done.stderr) == (0, b"")
    item = kc.item(SVC, "alice")
    assert item is not None and item.secret == hex_bytes(padded_hex(whole))
    # A line filling the buffer (size - 1 bytes) runs whole, but leaves its newline: an empty
    # command follows (which resets the exit status, see below)
    leftover = [["<cut-tail>", "0 bytes"]] if whole == buffer - 1 else []
    assert kc.calls()[1:] == [kc.calls()[1], *leftover] and len(kc.calls()[1]) == 8


@pytest.mark.parametrize(("buffer", "length"), [(4032, 4033), (4096, 4097)])
def test_i_cuts_a_longer_line_and_runs_its_rest(kc: SecurityDouble, buffer: int,
                                                length: int) -> None:
    kc.configure(line_buffer=buffer)
    hexdigits = padded_hex(length)
    done = run(kc, "-i", stdin=(add_line(hexdigits) + "\n").encode())
    item = kc.item(SVC, "alice")
    kept = buffer - 1 - (len(add_line("")) - 1)  # the head ran: a truncated secret was stored
    assert item is not None and item.secret == hex_bytes(hexdigits[:kept])
    tail = add_line(hexdigits)[buffer - 1:]
    assert done.stderr.decode().splitlines() == [
        f'security: unknown command "{tail}"', f"{tail}: returned 1"]
    assert done.returncode == 1
    assert kc.calls()[-1] == ["<cut-tail>", f"{len(tail)} bytes"]


def test_i_a_line_filling_the_buffer_masks_a_failure(kc: SecurityDouble) -> None:
    line = f'find-generic-password -a "alice" -s "{"x" * 4095}'[:4095]
    done = run(kc, "-i", stdin=(line + "\n").encode())
    assert b"could not be found" in done.stderr and done.returncode == 0  # go-keyring #153


def test_i_status_is_the_last_commands_and_a_line_without_newline_is_lost(
        kc: SecurityDouble) -> None:
    script = b"find-generic-password -s nope\nadd-generic-password -a a -s s -w x"
    done = run(kc, "-i", stdin=script)
    assert done.returncode == 44 and kc.items() == []
    assert done.stderr.endswith(b"find-generic-password: returned -25300\n")
    assert run(kc, "-q", "-i", stdin=b"find-generic-password -s nope\n").stderr.count(b"\n") == 1


def test_i_splits_words_as_apple_does(kc: SecurityDouble) -> None:
    line = b"add-generic-password -a \"al ice\" -s svc\\ 2 -w 'p\\'w'\n"
    assert run(kc, "-i", stdin=line).returncode == 0
    item = kc.item("svc 2", "al ice")
    assert item is not None and item.secret == b"p'w"
    assert split_line(b'a"b "c d"e \\"f') == [b'a"b', b"c d", b"e", b'"f']
    assert split_line(b" ".join([b"w"] * 40)) == [b"w"] * 32


def test_w_given_last_prompts_on_stdin(kc: SecurityDouble) -> None:
    done = run(kc, "add-generic-password", "-a", "alice", "-s", SVC, "-w", stdin=b"pw1\npw1\n")
    assert done.returncode == 0
    assert done.stderr == b"password data for new item: retype password for new item: "
    item = kc.item(SVC, "alice")
    assert item is not None and item.secret == b"pw1"


# -- robustness, recording, concurrency ---------------------------------------------------------
def test_usage_errors_and_unknown_commands(kc: SecurityDouble) -> None:
    bad_flag = run(kc, "find-generic-password", "-x")
    assert bad_flag.returncode == 2
    assert bad_flag.stderr.startswith(b"find-generic-password: illegal option -- x\nUsage: "
                                      b"find-generic-password [-h] [-a account]")
    assert bad_flag.stderr.endswith(b"\n        Find a generic password item.\n")
    unknown = run(kc, "frobnicate")
    assert (unknown.returncode, unknown.stderr) == (1, b'security: unknown command "frobnicate"\n')
    assert run(kc).returncode == 2 and run(kc, "-Z").returncode == 2
    assert run(kc, "add-generic-password", "-a", "alice").returncode == 2
    assert run(kc, "add-generic-password", "-a", "a", "-s", "s", "-X", "zz").returncode == 2
    assert run(kc, "find-generic").returncode == 44  # prefix of find-generic-password
    for done in (bad_flag, unknown):
        assert b"Traceback" not in done.stderr


def test_calls_never_hold_a_secret(kc: SecurityDouble) -> None:
    secrets = ["hunter2-argv", "hunter3-attached", "hunter4-prompt", "s3cr3t-kc-pw"]
    hexed = "7b22746f6b656e223a2268756e746572352d6865782d6c6f6e67227d" * 80
    run(kc, "add-generic-password", "-a", "a", "-s", "s1", "-w", secrets[0])
    run(kc, "add-generic-password", "-a", "a", "-s", "s2", f"-w{secrets[1]}")
    run(kc, "add-generic-password", "-a", "a", "-s", "s3", "-w",
        stdin=f"{secrets[2]}\n{secrets[2]}\n".encode())
    run(kc, "unlock-keychain", "-p", secrets[3])
    run(kc, "-i", stdin=(add_line(hexed) + "\n" + add_line("abcd") + "\n").encode())
    words = [w for call in kc.calls() for w in call]
    assert len(kc.calls()) == 8 and "-w<secret>" in words
    for word in words:
        assert not any(s in word for s in secrets) and "6865782d6c6f6e67" not in word
        assert "abcd" not in word


def test_decrypts_count_every_decrypt_asked_for(kc: SecurityDouble) -> None:
    kc.put(SVC, "alice", "{}")
    for args in (["-w"], ["-w"], ["-g"], []):
        run(kc, "find-generic-password", "-a", "alice", "-s", SVC, *args)
    assert kc.decrypts(SVC, "alice") == 3
    run(kc, "dump-keychain", "-d")
    kc.configure(locked=True)
    run(kc, "find-generic-password", "-a", "alice", "-s", SVC, "-w")
    assert kc.decrypts(SVC, "alice") == 5 and kc.decrypts(SVC, "bob") == 0


def test_delay_makes_every_command_wait(kc: SecurityDouble) -> None:
    kc.configure(delay_s=0.5)
    started = time.monotonic()
    assert run(kc, "find-generic-password", "-s", "nope").returncode == 44
    assert time.monotonic() - started >= 0.5


def test_eight_concurrent_writers_leave_a_consistent_keychain(kc: SecurityDouble) -> None:
    procs = []
    for n in range(8):
        script = "".join(f"{add_line(f'{n:02x}{k:02x}')}\n"
                         f'add-generic-password -a "w{n}" -s "own" -w "v{k}"\n'
                         if k == 0 else f"{add_line(f'{n:02x}{k:02x}')}\n" for k in range(5))
        proc = subprocess.Popen([str(kc.executable), "-i"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append((proc, script.encode()))
    results = [proc.communicate(script, timeout=120) for proc, script in procs]
    assert all(proc.returncode == 0 for proc, _ in procs), results
    items = kc.items()
    assert sorted(i.account for i in items if i.service == "own") == [f"w{n}" for n in range(8)]
    shared = [i for i in items if i.service == SVC]
    assert len(shared) == 1 and shared[0].secret.hex()[2:] == "04"  # some writer's last line
    assert len(kc.calls()) == 8 * (1 + 6)
