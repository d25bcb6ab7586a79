"""F14: a rewritten credential document gives the CLI back every number as it was written, and
never NaN or Infinity (the CLI's JSON.parse rejects them)."""

from __future__ import annotations

import copy
import json
import pickle
import re
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import jsondoc
from agent.credential import Credential, ReadState, parse_document
from agent.stores.claude_file import ClaudeFileStore
from agent.stores.sink import SinkStore

HOSTILE = ["1e400", "-1e400", "1.0e-400", "0.1000000000000000055511151231257827",
           "12345678901234567890.5", "-0.0", "1E+2", "123456789012345678901234567890",
           "2.5e-3", "5e-324"]


def document_text(other: str) -> str:
    oauth = {"accessToken": "sk-ant-oat01-old", "refreshToken": "sk-ant-ort01-old",
             "expiresAt": int(time.time() * 1000) + 3_600_000, "scopes": ["user:inference"]}
    return f'{{"numStartups": {other}, "nested": {{"list": [{other}, 1, "x"]}}, ' \
           f'"claudeAiOauth": {json.dumps(oauth)}}}'


def new_cred() -> Credential:
    return Credential.build("sk-ant-oat01-new", "sk-ant-ort01-new",
                            int(time.time() * 1000) + 7_200_000)


def assert_kept(data: bytes, number: str) -> None:
    text = data.decode()
    assert f'"numStartups": {number},' in text, text
    assert re.search(rf"\[\s*{re.escape(number)},", text), text
    assert "Infinity" not in text and "NaN" not in text
    doc = json.loads(text)  # Python parses it too (1e400 reads as inf there; it is valid JSON)
    assert doc["claudeAiOauth"]["accessToken"] == "sk-ant-oat01-new"


@pytest.mark.parametrize("number", HOSTILE)
def test_a_credential_file_rewrite_keeps_every_number_as_written(tmp_path: Path,
                                                                  number: str) -> None:
    store = ClaudeFileStore(tmp_path, sleep=lambda _: None)
    store.path.write_text(document_text(number))
    assert store.read().state is ReadState.VALID
    assert store.write(new_cred())
    assert_kept(store.path.read_bytes(), number)


@pytest.mark.parametrize("number", HOSTILE)
def test_a_claude_format_sink_rewrite_keeps_every_number_as_written(tmp_path: Path,
                                                                     number: str) -> None:
    tmp_path.chmod(0o700)
    sink = SinkStore(tmp_path / "sink.json", "claude")
    sink.path.write_text(document_text(number))
    sink.path.chmod(0o600)
    assert sink.write(new_cred())
    assert_kept(sink.path.read_bytes(), number)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_invalid_json(literal: str) -> None:
    with pytest.raises(ValueError):
        jsondoc.loads(f'{{"a": {literal}}}')
    reading, doc = parse_document(document_text(literal).encode())
    assert reading.state is ReadState.INVALID and doc is None


def test_a_non_finite_float_from_code_is_never_written() -> None:
    with pytest.raises(ValueError):
        jsondoc.dumps({"a": float("inf")})


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text()
                    | st.floats(allow_nan=False, allow_infinity=False),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10))
def test_what_json_writes_round_trips_byte_for_byte(value: object) -> None:
    text = json.dumps(value, indent=2).encode()
    assert jsondoc.dumps(jsondoc.loads(text)) == text


def test_a_number_survives_copy_and_pickle() -> None:
    number = jsondoc.loads("0.1000000000000000055511151231257827")
    for again in (copy.deepcopy(number), pickle.loads(pickle.dumps(number))):
        assert again.text == number.text and again == 0.1


def test_the_credential_object_stays_plain_numbers() -> None:
    raw = ('{"claudeAiOauth": {"accessToken": "a", "refreshToken": "r", '
           '"expiresAt": 1900000000000, "x": 0.1000000000000000055511151231257827}}')
    cred = parse_document(raw.encode())[0].valid
    assert cred is not None and type(cred.expires_at_ms) is int
    obj = cred.to_json_obj()
    assert type(obj["expiresAt"]) is int and type(obj["x"]) is float
    json.dumps(obj, allow_nan=False)  # credsync's own files take it as it is


def test_a_credential_holding_an_overflowing_number_is_invalid() -> None:
    raw = ('{"claudeAiOauth": {"accessToken": "a", "refreshToken": "r", '
           '"expiresAt": 1900000000000, "x": [1e400]}}')
    reading = parse_document(raw.encode())[0]
    assert reading.state is ReadState.INVALID and "too large" in reading.detail
