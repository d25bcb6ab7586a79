"""``credsync run`` as it runs on macOS, in a real process on Linux: the same steps as the
``run`` command (settings, logging, signals to the queue, ``run_agent``) with the stores built
for darwin and Claude Code's Keychain items reached through the ``security`` double.

``python -m tests.macagent CONFIG SECURITY``. ``credsync run`` itself cannot be pointed at the
double: the store path is chosen by ``sys.platform`` and ``/usr/bin/security`` is fixed, and a
setting or an environment variable that exists only for tests is not wanted. The one seam is
``run_agent(..., build=...)`` (and ``build_stores(..., platform, security)``).
"""

from __future__ import annotations

import functools
import logging
import queue
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from agent.cli.logsetup import setup_logging
    from agent.cli.main import load, signals_to_queue
    from agent.loop.build import build_stores
    from agent.loop.runtime import run_agent

    config, security = Path(argv[1]), Path(argv[2])
    settings, path = load(config)
    setup_logging(settings.agent.log_level, settings.agent.log_file)
    events: queue.Queue[object] = queue.Queue()
    build = functools.partial(build_stores, platform="darwin", security=security)
    with signals_to_queue(events):
        reason = run_agent(settings, path, events, build=build)
    logging.getLogger("credsync").info("stopped (%s)", reason)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
