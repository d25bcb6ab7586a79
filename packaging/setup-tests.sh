#!/bin/sh
# Install everything the tests need and run the whole suite (what CI runs).
# Debian packages when apt-get is there (real keychain, notification daemon, X server, systemd
# tools, redis-server for the cluster tests); Python packages in ./.venv. On macOS the Debian
# part is skipped: the tests that need gnome-keyring, dunst, Xvfb or redis-server then fail
# loudly rather than skip (brew install redis gives the last).
set -eu
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null; then
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_ apt-get update -q >/dev/null
    $sudo_ apt-get install -y -q --no-install-recommends python3-venv dbus-daemon dbus-bin \
        gnome-keyring libsecret-tools xvfb dunst libnotify-bin imagemagick xdotool \
        systemd redis-server faketime >/dev/null
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/ruff check agent tests
.venv/bin/mypy
# -n 2 (pytest-xdist): most tests wait on processes, servers and timers; two workers halve
# the wall time (about 8 min instead of 16 on 2 cores).
exec .venv/bin/python -m pytest -q -n 2 -m "slow or not slow" "$@"
