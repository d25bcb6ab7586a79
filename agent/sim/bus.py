"""A private D-Bus session bus for tests, benchmarks and the demo: activates nothing.

Debian's default session bus starts gnome-keyring, dunst and prompters on demand; a bus with no
``<servicedir>`` keeps a missing service missing, which is what "absent" cases need.
"""

from __future__ import annotations

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
