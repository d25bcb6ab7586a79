"""The clock, the token endpoint (over TLS, no token sent) and the environment against the
config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from agent import paths
from agent.cli.statustext import clean, span
from agent.clock import Clock
from agent.config import safe_url
from agent.doctor.model import Check, fail, ok, warn
from agent.refresh.http import EndpointAnswer

__all__ = ["clock_check", "endpoint_check", "environment_checks"]

# No clock set right can be before this release was written: a dead RTC battery says 1970.
EARLIEST_SANE = 1_764_547_200.0  # 2025-12-01
# The CLI refreshes in the last 5 minutes of a token's life: a clock that far off refreshes
# too late (or forever); a minute off is worth knowing.
SKEW_FAIL_S, SKEW_WARN_S = 300.0, 60.0
NTP_FIX = ("turn on time sync: `timedatectl set-ntp true` (Linux), `sudo sntp -sS "
           "time.apple.com` (macOS), `w32tm /resync` (Windows)")


class Endpoint(Protocol):
    def check(self, url: str) -> EndpointAnswer: ...


def endpoint_check(url: str, enabled: bool, probe: Endpoint) -> tuple[Check, EndpointAnswer |
                                                                       None]:
    name = "token endpoint"
    shown = safe_url(url)
    if not enabled:
        return ok(name, f"refresh off ([refresh] enabled = false): {shown} not used"), None
    answer = probe.check(url)
    if not answer.reachable:
        return fail(name, f"{shown} unreachable: {clean(answer.detail)}",
                    "check the network, a proxy (HTTPS_PROXY) or a firewall; "
                    "credsync retries by itself"), answer
    code = f"HTTP {answer.status_code}" if answer.status_code else "an answer"
    if not answer.tls:
        return warn(name, f"{shown} reachable ({code}) but over plain http, without TLS",
                    "use an https:// [refresh] token_url (plain http is for a local test "
                    "server)"), answer
    return ok(name, f"{shown} reachable over TLS ({code}; no token sent)"), answer


def clock_check(clock: Clock, answer: EndpointAnswer | None) -> Check:
    now = clock.now()
    if now < EARLIEST_SANE:
        return fail("clock", "the system clock is before this release was made", NTP_FIX)
    if answer is None or answer.server_date is None:
        return ok("clock", "plausible (no server time to compare with)")
    skew = now - answer.server_date
    ahead = f"{span(skew)} {'ahead of' if skew > 0 else 'behind'} the token server"
    if abs(skew) > SKEW_FAIL_S:
        return fail("clock", ahead, NTP_FIX)
    if abs(skew) > SKEW_WARN_S:
        return warn("clock", ahead, NTP_FIX)
    return ok("clock", "in step with the token server" + (f" ({ahead})" if abs(skew) >= 2
                                                           else ""))


def environment_checks(env: Mapping[str, str], config_dirs: list[Path], config_file: Path,
                       securestorage_dir: str | None) -> list[Check]:
    """This shell's sessions use the dir the variables name: is credsync keeping it?"""
    set_vars = [n for n in paths.CLAUDE_DIR_VARS if n in env]
    current = paths.current_claude_config_dir(env)
    where = f"{', '.join(f'{n}={clean(env[n])}' for n in set_vars)}" if set_vars else \
        "no CLAUDE_CONFIG_DIR"
    kept = [Path(d) for d in config_dirs]
    checks = []
    if current in kept:
        checks.append(ok("environment", f"{where}: sessions here use {current}, which credsync "
                         "keeps"))
    else:
        listed = ", ".join(f'"{d}"' for d in [*kept, current])
        unset = " (or run from a shell without the variable)" if set_vars else ""
        checks.append(fail("environment", f"{where}: sessions here use {current}, which "
                           "credsync does not keep", f"set [claude] config_dirs = [{listed}] "
                           f"in {config_file}{unset}"))
    secure = env.get("CLAUDE_SECURESTORAGE_CONFIG_DIR")
    if secure and securestorage_dir is not None and secure != securestorage_dir:
        checks.append(warn("environment keychain", f"CLAUDE_SECURESTORAGE_CONFIG_DIR={secure} "
                           f"but [claude] securestorage_dir = {securestorage_dir}",
                           f"set [claude] securestorage_dir = \"{secure}\" in {config_file}"))
    return checks
