"""A private D-Bus session bus for tests, benchmarks and the demo: activates nothing.

Debian's default session bus starts gnome-keyring, dunst and prompters on demand; a bus with no
``<servicedir>`` keeps a missing service missing, which is what "absent" cases need.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def name_has_owner(env: Mapping[str, str], name: str, check: bool = False) -> bool:
    """Is ``name`` owned on the session bus that ``env`` points at (dbus-send, 5 s at most)?"""
    out = subprocess.run(
        ["dbus-send", "--session", "--dest=org.freedesktop.DBus", "--type=method_call",
         "--print-reply", "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
         f"string:{name}"], env=dict(env), capture_output=True, timeout=5, check=check)
    return b"boolean true" in out.stdout


def stop_process(proc: subprocess.Popen[bytes] | None, deadline_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``deadline_s``; nothing if it is gone already."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=deadline_s)
