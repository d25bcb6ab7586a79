"""The cluster's pure parts: URL policy, keys and envelopes, join codes, gossip, secret files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cluster.envelope import (
    Binding,
    ClusterKeys,
    EnvelopeError,
    Payload,
    open_state,
    seal_state,
)
from agent.cluster.gossip import Gossip
from agent.cluster.invite import InviteCode, open_invite, parse_code, seal_invite
from agent.cluster.keystore import Keychain, KeyStore, read_private_file, redis_password
from agent.cluster.urls import parse_redis_url
from agent.errors import ClusterError, ConfigError
from agent.stores.keychain import MemoryKeyring, UnavailableBackend
from tests.factories import make_cred

KEY = bytes(range(32))


# ----- URL policy ----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/0"),
    ("redis://localhost", "redis://localhost:6379/0"),
    ("redis://[::1]:7000/2", "redis://[::1]:7000/2"),
    ("redis://127.8.9.10/1", "redis://127.8.9.10:6379/1"),
    ("rediss://cs-user@redis.example.com:6380/0", "rediss://cs-user@redis.example.com:6380/0"),
    ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock"),
    ("unix:///run/redis.sock?db=3", "unix:///run/redis.sock?db=3"),
])
def test_accepted_urls(url: str, shown: str) -> None:
    assert parse_redis_url(url, "--redis").shown == shown


@pytest.mark.parametrize(("url", "says"), [
    ("redis://10.0.0.5:6379/0", "use rediss:// (TLS)"),
    ("redis://redis.example.com/0", "use rediss:// (TLS)"),
    ("redis://:hunter2-secret@127.0.0.1/0", "holds a password"),
    ("rediss://u:hunter2-secret@h.example/0", "holds a password"),
    ("rediss://h.example/0?ssl_cert_reqs=none", "?query"),
    ("http://h.example/0", "not a Redis URL"),
    ("rediss:///0", "no host"),
    ("rediss://h.example/zero", "must be a number"),
    ("unix://host/x.sock", "not a host"),
    ("unix:///x.sock?timeout=1", "other than db"),
    ("rediss://h.example:99999/0", "not a valid URL"),
    ("", "empty"),
])
def test_refused_urls_name_the_field_and_the_fix_in_one_line(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_redis_url(url, "--redis")
    (line,) = caught.value.problems
    assert line.startswith("--redis: ") and says in line and "; " in line
    assert "hunter2" not in line


def test_rediss_verifies_certificates() -> None:
    target = parse_redis_url("rediss://h.example:6380/0", "f")
    assert target.tls and target.port == 6380


# ----- keys, claim ids and envelopes ---------------------------------------------------------

def test_claim_ids_are_keyed_and_stable() -> None:
    keys, other = ClusterKeys.from_key(KEY), ClusterKeys.from_key(bytes(32))
    token = "sk-ant-ort01-abc"
    assert keys.claim_id(token) == keys.claim_id(token) != other.claim_id(token)
    assert len(keys.claim_id(token)) == 32 and keys.kid != other.kid
    assert "claim" not in repr(keys) or KEY.hex() not in repr(keys)


def _binding(**kw: object) -> Binding:
    base: dict[str, object] = {"login_id": "0123456789abcdef", "kid": ClusterKeys.from_key(KEY).kid,
                               "epoch": "ab:1", "version": 3, "fence": 7}
    base.update(kw)
    return Binding(**base)  # type: ignore[arg-type]


def test_an_envelope_opens_only_where_it_was_sealed() -> None:
    keys = ClusterKeys.from_key(KEY)
    cred = make_cred(1_900_000_000_000)
    blob = seal_state(keys, _binding(), Payload(cred, 5, 123, 28800.0, "m1", "c0"))
    opened = open_state(keys, _binding(), blob)
    assert opened.credential.same_tokens(cred) and opened.gen == 5 and opened.by == "m1"
    assert cred.access_token not in blob and cred.refresh_token not in blob
    for changed in ({"version": 4}, {"fence": 8}, {"epoch": "ab:2"},
                    {"login_id": "fedcba9876543210"}):
        with pytest.raises(EnvelopeError):
            open_state(keys, _binding(**changed), blob)
    with pytest.raises(EnvelopeError):
        open_state(ClusterKeys.from_key(bytes(32)), _binding(), blob)
    kid, _, body = blob.partition(".")
    flipped = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    with pytest.raises(EnvelopeError):
        open_state(keys, _binding(), f"{kid}.{flipped}")


# ----- join codes ----------------------------------------------------------------------------

def test_a_join_code_round_trips_and_carries_the_key_sealed() -> None:
    code = InviteCode.new("0123456789abcdef")
    text = code.text
    assert text.startswith("CS1-") and len(text) == 46
    again = parse_code(text.lower()[:10] + " " + text.lower()[10:])
    assert again == code and again.invite_id == code.invite_id
    blob = seal_invite(code, KEY, "m1")
    assert KEY not in blob and code.secret not in blob
    assert open_invite(again, blob) == (KEY, "m1")
    with pytest.raises(ClusterError):
        open_invite(InviteCode.new("0123456789abcdef"), blob)


@pytest.mark.parametrize("text", ["XYZ-ABC", "CS1-", "CS1-!!!!", "CS1-AAAAAAAAAAAAAAAAAAAAAA"])
def test_a_bad_code_is_one_line_naming_it(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_code(text)
    (line,) = caught.value.problems
    assert line.startswith("CODE: ") and "cluster invite" in line


def test_a_mistyped_code_is_told_from_a_used_one() -> None:
    text = InviteCode.new("0123456789abcdef").text
    typo = text[:-3] + ("A" if text[-3] != "A" else "B") + text[-2:]
    with pytest.raises(ConfigError, match="mistyped"):
        parse_code(typo)


# ----- gossip --------------------------------------------------------------------------------

def test_gossip_keeps_live_claims_release_only_by_holder_lost_is_final(tmp_path: Path) -> None:
    gossip = Gossip(tmp_path / "g", keep=4)
    gossip.claimed("aa" * 8, "m1", 0, 1.0)
    gossip.claimed("aa" * 8, "m1", 3, 1.0)  # the answer: fence 3
    gossip.claimed("bb" * 8, "m2", 4, 1.0)
    gossip.released("bb" * 8, "m1")  # not the holder: ignored
    gossip.lost("cc" * 8, "m2", 5)
    gossip.released("cc" * 8, "m2")  # lost is final
    claims = {c.claim_id: c for c in gossip.claims()}
    assert claims["aa" * 8].fence == 3 and claims["bb" * 8].agent == "m2"
    assert claims["cc" * 8].lost and claims["cc" * 8].reseed_value() == "m2|5|0|lost"
    gossip.released("aa" * 8, "m1")
    assert "aa" * 8 not in {c.claim_id for c in gossip.claims()}
    assert os.stat(tmp_path / "g").st_mode & 0o777 == 0o600


def test_gossip_keeps_the_newest_and_compacts(tmp_path: Path) -> None:
    gossip = Gossip(tmp_path / "g", keep=4)
    for i in range(200):
        gossip.claimed(f"{i:016x}", "m1", i, 1.0)
    assert [c.fence for c in gossip.claims()] == [196, 197, 198, 199]
    assert (tmp_path / "g").stat().st_size < 4 * 4 * 80 + 200
    (tmp_path / "g").write_bytes(b"garbage\nC zz m1 1\n\x00\xff\n")
    assert gossip.claims() == []


# ----- secret files and the keychain ---------------------------------------------------------

def test_a_password_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "redis.pass"
    path.write_text("s3cret-pw\n")
    os.chmod(path, 0o644)
    with pytest.raises(ClusterError) as caught:
        redis_password(path, None, "redis:x")
    assert "cluster.password_file" in str(caught.value) and f"chmod 600 {path}" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    os.chmod(path, 0o600)
    assert redis_password(path, None, "redis:x") == "s3cret-pw"


def test_a_missing_or_special_password_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="cannot open"):
        read_private_file(tmp_path / "none", "cluster.password_file")
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(ClusterError, match="not a regular file"):
        read_private_file(tmp_path / "fifo", "cluster.password_file")


def test_the_password_may_come_from_credsyncs_keychain_item() -> None:
    ring = MemoryKeyring()
    ring.set_password("credsync", "redis:rediss://h.example:6380/0", "pw-from-keychain")
    keychain = Keychain(ring)
    try:
        assert redis_password(None, keychain, "redis:rediss://h.example:6380/0") == \
            "pw-from-keychain"
        assert redis_password(None, keychain, "redis:other") is None
    finally:
        keychain.close()


def test_the_cluster_key_goes_to_the_keychain_else_a_0600_file(tmp_path: Path) -> None:
    ring = MemoryKeyring()
    keychain = Keychain(ring)
    try:
        store = KeyStore(tmp_path, keychain)
        assert store.save("0123456789abcdef", KEY) == "keychain"
        assert ring.items[("credsync", "cluster:0123456789abcdef")] == KEY.hex()
        assert store.load("0123456789abcdef", "keychain") == KEY
        assert not (tmp_path / "cluster.key").exists()
        store.delete("0123456789abcdef", "keychain")
        assert not ring.items
    finally:
        keychain.close()
    broken = Keychain(UnavailableBackend("no session bus"))
    try:
        store = KeyStore(tmp_path, broken)
        assert store.save("0123456789abcdef", KEY) == "file"
        assert (tmp_path / "cluster.key").stat().st_mode & 0o777 == 0o600
        assert store.load("0123456789abcdef", "file") == KEY
        os.chmod(tmp_path / "cluster.key", 0o640)
        with pytest.raises(ClusterError, match="chmod 600"):
            store.load("0123456789abcdef", "file")
        with pytest.raises(ClusterError, match="cannot be used now"):
            store.load("0123456789abcdef", "keychain")
    finally:
        broken.close()


def test_redis_is_imported_by_one_module_only() -> None:
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1] / "agent"
    # The benchmark's floor is a bare redis-py loop on purpose: it is what the agent's path
    # is measured against, so it must not go through the agent's own module.
    importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                       if re.search(r"^\s*(import redis|from redis)", p.read_text(), re.M)
                       and p.relative_to(root).parts[0] != "bench")
    assert importers == ["cluster/redisio.py"]
    out = subprocess.run([sys.executable, "-c", "import agent.cluster, sys; "
                          "print('redis' in sys.modules)"], capture_output=True, text=True,
                         cwd=root.parent, check=True)
    assert out.stdout.strip() == "False"  # a login in no cluster never loads redis
