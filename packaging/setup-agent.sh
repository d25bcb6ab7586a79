#!/bin/sh
# Install credsync for this user and run the agent in the foreground on its default
# configuration (stop it with Ctrl-C; `credsync install` makes it a login item instead).
# Debian/Ubuntu: needs python3 with venv (apt-get install python3-venv). macOS: python3 from
# python.org or Homebrew; nothing else differs.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${CREDSYNC_PREFIX:-"$HOME/.local/share/credsync/venv"}
python=${PYTHON:-python3}
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null && command -v apt-get >/dev/null; then
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get update -q && $sudo_ apt-get install -y -q python3-venv
fi
[ -x "$prefix/bin/python" ] || "$python" -m venv "$prefix"
"$prefix/bin/python" -m pip install -q --upgrade pip
# A plain install brings every dependency, desktop-notifier included (desktop alerts work).
"$prefix/bin/python" -m pip install -q "$here"
mkdir -p "$HOME/.local/bin"
ln -sf "$prefix/bin/credsync" "$HOME/.local/bin/credsync"
echo "credsync installed: $HOME/.local/bin/credsync (agent starting; Ctrl-C stops it)"
exec "$prefix/bin/credsync" run
