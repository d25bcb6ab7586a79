"""JSON for documents credsync rewrites but does not own (the CLI's credential file).

``json`` turns ``1e400`` into ``inf`` and writes it back as ``Infinity``, which the CLI's
``JSON.parse`` rejects, and rounds ``0.1000000000000000055511151231257827`` to ``0.1``. Here every
non-integer number parsed is a ``Number``: a float (so code reading it sees a float) that
remembers its source text, and ``dumps`` writes that text back. Integers already round-trip.
``NaN`` and ``Infinity`` are invalid JSON: refused when read, never written.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["Number", "dumps", "loads"]


class Number(float):
    """A JSON number with a fraction or exponent, as it was written."""

    text: str

    def __new__(cls, text: str) -> Number:
        number = super().__new__(cls, text)  # 1e400 is inf here; the text keeps it exact
        number.text = text
        return number

    def __getnewargs__(self) -> tuple[str]:  # type: ignore[override]
        return (self.text,)  # copy and pickle rebuild it from its text, not from the float


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(raw: bytes | str) -> Any:
    """Parse JSON; ValueError for invalid JSON, including NaN and Infinity literals."""
    return json.loads(raw, parse_float=Number, parse_constant=_refuse_constant)


def dumps(obj: Any, indent: int | None = 2,
          separators: tuple[str, str] | None = None) -> bytes:
    """Serialise ``obj``; every ``Number`` is written as its source text. ValueError for a
    non-finite float that did not come from a document (the CLI could not read it back)."""
    marker = f"jsondoc-{os.urandom(8).hex()}-"
    texts: list[str] = []

    def swap(value: Any) -> Any:
        if isinstance(value, Number):
            texts.append(value.text)
            return f"{marker}{len(texts) - 1}"
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [swap(item) for item in value]
        return value

    # allow_nan=False: never Infinity or NaN, which JSON.parse rejects.
    text = json.dumps(swap(obj), indent=indent, separators=separators, allow_nan=False)
    for index, number in enumerate(texts):
        # The marker is random per call and a JSON string holding it needs no escape: the
        # quoted placeholder occurs exactly where the number was.
        text = text.replace(f'"{marker}{index}"', number, 1)
    return text.encode("ascii")  # ensure_ascii: lone surrogates stay escaped
