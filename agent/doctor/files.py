"""The config file and Claude Code's credential files: found, valid, private, owned, linked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.config import Settings
from agent.doctor.model import Check, fail, ok, warn

__all__ = ["config_checks", "credential_file_check", "split_fix"]


def split_fix(problem: str) -> tuple[str, str]:
    """A config loader line is "<what>; <fix>": the fix is its last clause."""
    what, sep, fix = problem.rpartition("; ")
    return (what, fix) if sep else (problem, "fix the line named, see config.example.toml")


def config_checks(path: Path, settings: Settings | None, problems: list[str]) -> list[Check]:
    """Found, valid (the loader's strict rules: one check per problem), and private."""
    if problems:
        return [fail("config", *split_fix(line)) for line in problems]
    if not path.is_file():
        return [ok("config", f"no file at {path}: the defaults are used")]
    assert settings is not None
    return [ok("config", f"{path}: valid"), _private(path, settings)]


def _secrets_in(settings: Settings) -> list[str]:
    held = []
    if settings.refresh.client_secret:
        held.append("refresh.client_secret")
    if settings.notify.webhook:
        held.append("notify.webhook")
    return held


def _private(path: Path, settings: Settings) -> Check:
    # The loader already refuses a file others can write; a file others can read matters only
    # when it holds a secret.
    mode = os.stat(path).st_mode
    secrets = _secrets_in(settings)
    if mode & 0o077 and secrets:
        return warn("config private", f"{path} is readable by group or others and holds "
                    f"{', '.join(secrets)}", f"chmod 600 {path}")
    return ok("config private", "only you can change it" +
              ("" if mode & 0o077 else ", and only you can read it"))


def credential_file_check(config_dir: Path, uid: int | None = None) -> Check:
    """``<dir>/.credentials.json``: present, a plain file (through a symlink is fine), yours,
    private. What it holds is the login check's business."""
    path = config_dir / ".credentials.json"
    name = f"file {path}"
    uid = os.getuid() if uid is None else uid
    if not config_dir.is_dir():
        return fail(name, f"config dir {config_dir} does not exist",
                    f"mkdir -m 700 {config_dir} (or remove it from [claude] config_dirs)")
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return ok(name, "not there (no login in this dir yet)")
    except OSError as exc:
        return fail(name, f"cannot be inspected: {exc.strerror}", f"chmod u+rwx {config_dir}")
    linked = f" (a symlink to {os.path.realpath(path)})" if stat.S_ISLNK(link.st_mode) else ""
    try:
        st = os.stat(path)
    except OSError as exc:
        return fail(name, f"a broken symlink{linked}: {exc.strerror}",
                    f"rm {path} (then log in again), or point the link at the real file")
    return _file_facts(name, path, st, uid, linked)


def _file_facts(name: str, path: Path, st: os.stat_result, uid: int, linked: str) -> Check:
    if not stat.S_ISREG(st.st_mode):
        return fail(name, f"not a regular file{linked}", f"move {path} away; log in again")
    if st.st_uid != uid:
        return fail(name, f"owned by uid {st.st_uid}, not you (uid {uid}){linked}",
                    f"chown {uid} {path}")
    if st.st_mode & 0o077:
        return warn(name, f"readable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
                    f"{linked}", f"chmod 600 {path}")
    return ok(name, f"yours, private{linked}")
