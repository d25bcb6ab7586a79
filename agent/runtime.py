"""Assembling and running the agent for the CLI."""

from __future__ import annotations

import logging
import queue
from pathlib import Path

from agent.agent import Agent
from agent.build import build_stores, close_stores, state_dir
from agent.clock import SystemClock
from agent.config import Settings
from agent.errors import AgentAlreadyRunning, LockError
from agent.filelock import InstanceLock
from agent.status import Status, collect
from agent.watcher import Watcher

log = logging.getLogger("credsync")


def run_agent(settings: Settings, config_path: Path, events: queue.Queue[object]) -> str:
    state = state_dir(settings)
    state.ensure()
    instance = InstanceLock(state.path)
    try:
        instance.acquire()
    except LockError as exc:
        pid = instance.holder()
        raise AgentAlreadyRunning(
            f"another agent already runs for {state.path} (pid {pid}); stop it first",
            pid) from exc
    stores = build_stores(settings)
    try:
        watch = [s.watch_path for s in stores if s.watch_path is not None]
        agent = Agent(stores, state, SystemClock(), events, Watcher(watch, events),
                      debounce_s=settings.agent.debounce_ms / 1000)
        agent.load()
        log.info("started: %d stores, config %s, state %s", len(stores), config_path, state.path)
        return agent.run()
    finally:
        close_stores(stores)
        instance.release()


def collect_status(settings: Settings, config_path: Path) -> Status:
    stores = build_stores(settings)
    try:
        return collect(stores, state_dir(settings), str(config_path), SystemClock().now())
    finally:
        close_stores(stores)
