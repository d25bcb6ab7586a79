"""What a check says: a name, ok/warn/fail, one line, and the exact fix for anything not ok."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "Level", "fail", "ok", "warn"]


class Level(str, enum.Enum):
    OK = "ok"
    WARN = "warn"  # works now, but something will bite (or a copy is behind)
    FAIL = "fail"  # a session can be logged out, or an alert lost, because of this


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    summary: str
    fix: str = ""  # the command or setting that fixes it; "" only when level is OK

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level.value, "summary": self.summary,
                "fix": self.fix or None}


def ok(name: str, summary: str) -> Check:
    return Check(name, Level.OK, summary)


def warn(name: str, summary: str, fix: str) -> Check:
    return Check(name, Level.WARN, summary, fix)


def fail(name: str, summary: str, fix: str) -> Check:
    return Check(name, Level.FAIL, summary, fix)
