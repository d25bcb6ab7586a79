"""Assembling and running the agent for the CLI."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from agent.clock import Clock, SystemClock
from agent.credential import Credential
from agent.errors import (
    AgentAlreadyRunning,
    ClusterError,
    ConfigError,
    LockError,
    RefreshError,
    ReloginRequired,
    StoreError,
)
from agent.ledger import Ledger
from agent.loop.build import build_stores, close_stores, ledger_of
from agent.reconcile import Reconciler
from agent.refresh.coordinator import Coordinator, Kind, Outcome, RefreshDriver, RefreshResultLike
from agent.refresh.peers import Claim, Hold, Peers
from agent.stores.base import Store
from agent.stores.claude_file import ClaudeFileStore
from agent.winner import LoginState, Verdict

# `credsync token` imports this module: what only the other commands need (pydantic through
# the config, portalocker, the status report) is imported where it is used.
if TYPE_CHECKING:
    from agent.cli.status import Status
    from agent.cli.tokennote import Note
    from agent.cluster.node import ClusterNode
    from agent.config import Settings
    from agent.loop.agent import Agent
    from agent.notify.alerting import Alerting
    from agent.notify.alerts import Product
    from agent.refresh.http import HttpRefresher
    from agent.stores.keychain import KeychainBackend

log = logging.getLogger("credsync")

StoreBuilder = Callable[["Settings"], list[Store]]


def run_agent(settings: Settings, config_path: Path, events: queue.Queue[object],
              build: StoreBuilder = build_stores) -> str:
    """``credsync run``: the loop until a Stop, with a lane for each side that is on (Claude
    Code's config dirs, Codex's homes). ``build`` makes Claude's stores from the settings
    (tests build the darwin stores on the ``security`` double with it)."""
    if not settings.claude.config_dirs and not settings.codex.enabled:
        raise RefreshError("nothing to keep: [claude] config_dirs is empty and no Codex home "
                           "is set; list one in the config file ([claude] config_dirs or "
                           "[codex] homes)")
    from agent.loop.lanes import Lanes
    from agent.loop.watcher import Watcher

    clock = SystemClock()
    with contextlib.ExitStack() as stack:
        lanes: list[Agent] = []
        if settings.claude.config_dirs:
            lanes.append(stack.enter_context(_claude_lane(settings, clock, events, build)))
        if settings.codex.enabled:
            for account in codex_accounts(settings):  # a lane per account: no winner across
                lanes.append(stack.enter_context(_codex_lane(account, clock, events)))
        watch = [s.watch_path for lane in lanes for s in lane.stores if s.watch_path is not None]
        for lane in lanes:
            log.info("started: %d stores, config %s, state %s", len(lane.stores), config_path,
                     lane.ledger.path)
        return Lanes(lanes, events, Watcher(watch, events)).run()


@contextmanager
def _instance(ledger: Ledger) -> Iterator[None]:
    from agent.locks.filelock import InstanceLock

    ledger.ensure()
    instance = InstanceLock(ledger.path)
    try:
        instance.acquire()
    except LockError as exc:
        pid = instance.holder()
        raise AgentAlreadyRunning(
            f"another agent already runs for {ledger.path} (pid {pid}); stop it first",
            pid) from exc
    try:
        yield
    finally:
        instance.release()


def _driver(settings: Settings, coord: Coordinator) -> RefreshDriver | None:
    if not settings.refresh.enabled:
        return None
    from agent.refresh.http import Backoff

    return RefreshDriver(coord, Backoff())


@contextmanager
def _alerting(settings: Settings, ledger: Ledger, clock: Clock,
              product: Product | None = None) -> Iterator[Alerting]:
    from agent.notify.alerting import Alerting
    from agent.notify.alerts import CLAUDE
    from agent.notify.notifier import build_notifier

    alerting = Alerting(settings.notify, build_notifier(settings.notify), ledger, clock,
                        product or CLAUDE)
    try:
        yield alerting
    finally:
        alerting.close()


@contextmanager
def _claude_lane(settings: Settings, clock: Clock, events: queue.Queue[object],
                 build: StoreBuilder) -> Iterator[Agent]:
    # The loop's modules (watchdog among them) are loaded only by the command that runs it.
    from agent.locks.guard import CliLockGuard
    from agent.loop.agent import Agent

    ledger = ledger_of(settings)
    with _instance(ledger), \
            coordinator(settings, clock, repair_garbage=True, events=events,
                        build=build) as coord, \
            _alerting(settings, ledger, clock) as alerting:
        coord.records.ensure_salt()
        guard = CliLockGuard(settings.claude.config_dirs) \
            if settings.refresh.enabled and settings.refresh.hold_cli_locks else None
        agent = Agent(coord.stores, ledger, clock, events, None,
                      debounce_s=settings.agent.debounce_ms / 1000,
                      refresh=_driver(settings, coord), alerting=alerting, writer=coord.writer,
                      guard=guard, cluster=companion(coord))
        agent.load()
        yield agent


@contextmanager
def _codex_lane(account: CodexAccount, clock: Clock,
                events: queue.Queue[object]) -> Iterator[Agent]:
    from agent.loop.agent import Agent
    from agent.notify.alerts import CODEX

    settings = account.settings
    ledger = codex_ledger_of(settings)
    with _instance(ledger), \
            codex_coordinator(settings, clock, repair_garbage=True,
                              identity=account.identity) as coord, \
            _alerting(settings, ledger, clock, CODEX) as alerting:
        coord.records.ensure_salt()
        agent = Agent(coord.stores, ledger, clock, events, None,
                      debounce_s=settings.agent.debounce_ms / 1000,
                      refresh=_driver(settings, coord), alerting=alerting, writer=coord.writer)
        agent.load()
        yield agent


def companion(coord: Coordinator) -> ClusterNode | None:
    """The cluster node behind the coordinator's peers: it runs on the loop too."""
    if coord.peers is None:
        return None
    from agent.cluster.node import ClusterNode

    return coord.peers if isinstance(coord.peers, ClusterNode) else None


class LazyRefresher:
    """The HTTP refresher, built on first use: `credsync token` with a fresh token never imports
    httpx (start-up time matters for a command run by every session). Claude Code's by
    default; ``codex=True``, Codex's (its endpoint, client and request)."""

    def __init__(self, settings: Settings, clock: Clock, codex: bool = False) -> None:
        self.settings = settings
        self.clock = clock
        self.codex = codex
        self._real: HttpRefresher | None = None

    def prepare(self) -> HttpRefresher:
        """Build the HTTP client now (the coordinator calls this before journaling a token)."""
        if self._real is None:
            if self.codex:
                from agent.codex.refresher import CodexRefresher

                self._real = CodexRefresher.from_sections(self.settings.codex,
                                                          self.settings.refresh, self.clock)
            else:
                from agent.refresh.http import HttpRefresher

                self._real = HttpRefresher.from_settings(self.settings.refresh, self.clock)
        return self._real

    def refresh(self, cred: Credential) -> RefreshResultLike:
        return self.prepare().refresh(cred)

    def close(self) -> None:
        if self._real is not None:
            self._real.close()


@contextmanager
def coordinator(settings: Settings, clock: Clock, repair_garbage: bool = False,
                events: queue.Queue[object] | None = None,
                build: StoreBuilder = build_stores) -> Iterator[Coordinator]:
    """The refresh coordinator and, through it, the one writer of the stores. One-shot
    commands never repair garbage: only the agent can tell a write in progress. A login in
    a cluster gets the cluster as one more store and as the coordinator's peers; the
    agent's ``events`` get the cluster's events."""
    stores = build(settings)
    peers: Peers | None = None
    try:
        node = cluster_node(settings, clock, events)
    except ClusterError as exc:
        if events is not None:
            raise  # `credsync run`: a member whose cluster cannot be opened says so and stops
        # A one-shot command (token, status, refresh) still reads the local stores and hands
        # out a valid token, but never refreshes without the cluster's claim.
        node, peers = None, NoClusterPeers(str(exc))
    if node is not None:
        from agent.stores.cluster import ClusterStore

        stores.append(ClusterStore(node))
        peers = node
    refresher = LazyRefresher(settings, clock)
    writer = Reconciler(stores, ledger_of(settings), clock, settings.refresh.max_lifetime_s,
                        repair_garbage)
    try:
        yield Coordinator(settings.refresh, writer, settings.claude.config_dirs, refresher,
                          clock, peers=peers)
    finally:
        refresher.close()
        close_stores(stores)
        if node is not None and events is None:
            node.stop()  # the agent's loop stops its own


# Codex's access tokens may live for days (the note: 1 h to about 10 d seen): a Codex login
# is implausible only past 30 days, where Claude's is past [refresh] max_lifetime_s (24 h).
CODEX_MAX_LIFETIME_S = 30 * 86400.0


class CodexAccount(NamedTuple):
    """One Codex account's part of the settings: ``[codex] homes`` narrowed to its homes, and
    a login of the account (``identity``) when the homes hold several (None: any login)."""

    settings: Settings
    identity: Credential | None = None


def codex_accounts(settings: Settings) -> list[CodexAccount]:
    """Each Codex account's homes (``agent.codex.groups``), the first home's account first;
    just ``settings`` when its homes hold one account's login or none."""
    from agent.codex.groups import group_homes
    from agent.codex.homes import plan_homes
    from agent.loop.build import LazyBackend

    homes = list(settings.codex.homes)
    if len(homes) < 2:
        return [CodexAccount(settings)]
    keychain = LazyBackend()
    held: list[tuple[Path, Credential | None]] = []
    for home in homes:
        try:
            stores = [s for plan in plan_homes([home], keychain, settings.codex.keychain)
                      for s in plan.stores]
        except ConfigError:  # a home whose store mode is unreadable: its lane will say so
            stores = []
        try:
            held.append((home, next((c for c in (s.read().valid for s in stores)
                                     if c is not None), None)))
        finally:
            close_stores(stores)
    groups = group_homes(held)
    if len(groups) == 1:
        return [CodexAccount(settings)]
    return [CodexAccount(settings.model_copy(update={"codex": settings.codex.model_copy(
        update={"homes": group})}), identity) for group, identity in groups]


def _account_of_home(accounts: list[CodexAccount], env: Mapping[str, str]) -> CodexAccount:
    from agent.config import default_codex_homes

    value = env.get("CODEX_HOME")
    if value:
        [home] = default_codex_homes({"CODEX_HOME": value})  # as Codex resolves it
        for account in accounts:
            if home in (Path(os.path.abspath(h)) for h in account.settings.codex.homes):
                return account
    return accounts[0]


def _codex_agent_elsewhere(settings: Settings) -> int | None:
    """The pid of an agent running another Codex scope of this state dir, if one does."""
    from agent.locks.filelock import InstanceLock

    ledger = codex_ledger_of(settings)
    mine = ledger.path
    others = (d for d in sorted(mine.parent.glob(f"{ledger.provider}-*")) if d != mine)
    return next((pid for d in others if (pid := InstanceLock(d).holder()) is not None), None)


def codex_ledger_of(settings: Settings) -> Ledger:
    """The ledger of the Codex login these settings keep (a scope of its own)."""
    return Ledger(Path(settings.agent.state_dir), settings.codex.homes, provider="codex")


@contextmanager
def codex_coordinator(settings: Settings, clock: Clock, repair_garbage: bool = False,
                      backend: KeychainBackend | None = None,
                      identity: Credential | None = None) -> Iterator[Coordinator]:
    """The Codex side's coordinator: its homes' stores, Codex's refresher and schedule (its
    5-minute window, the access token's own lifetime), no CLI refresh lock (Codex has none:
    credsync's own lock and journal are what there is). With ``identity`` (a login of the
    account, when the homes hold several), a home on another account is no candidate."""
    from agent.codex.homes import codex_stores
    from agent.codex.tokens import lifetime_s, same_identity
    from agent.loop.build import LazyBackend

    told: set[str] = set()

    def foreign(cred: Credential) -> str | None:
        if identity is None or same_identity(identity, cred):
            return None
        why = ("it holds a login of another Codex account than credsync keeps here; restart "
               "credsync to keep it (it sorts the homes by account when it starts)")
        if cred.fingerprint not in told:  # once per login, not once per round
            told.add(cred.fingerprint)
            log.warning("Codex login %s: %s", cred.fingerprint, why)
        return why

    keychain = backend if backend is not None else LazyBackend()
    stores = codex_stores(settings.codex.homes, keychain, settings.codex.keychain)
    refresher = LazyRefresher(settings, clock, codex=True)
    writer = Reconciler(stores, codex_ledger_of(settings), clock, CODEX_MAX_LIFETIME_S,
                        repair_garbage, foreign=foreign)
    try:
        yield Coordinator(settings.codex_refresh(), writer, [], refresher, clock,
                          lifetime_of=lifetime_s)
    finally:
        refresher.close()
        close_stores(stores)


class NoClusterPeers:
    """The peers of a member whose cluster cannot be opened (its key or membership file is
    damaged): nothing is ever sent, with the reason."""

    def __init__(self, why: str) -> None:
        self.why = why

    def hold(self, now: float) -> Hold:
        return Hold(f"this machine's cluster cannot be opened ({self.why}); not refreshing "
                    "without it", 60.0)

    def check(self) -> bool:
        return False

    def claim(self, cred: Credential) -> Hold:
        return self.hold(0.0)

    def expired(self, claim: Claim) -> bool:
        return True

    def sent(self, claim: Claim, new: Credential, expires_in: float | None) -> None:
        pass

    def unsent(self, claim: Claim) -> None:
        pass

    def lost(self, claim: Claim) -> None:
        pass

    def lost_token(self, cred: Credential) -> None:
        pass


def cluster_node(settings: Settings, clock: Clock,
                 events: queue.Queue[object] | None) -> ClusterNode | None:
    from agent.cluster.membership import MEMBERSHIP_FILE

    # Checked without importing the cluster's modules (redis, cryptography): `credsync
    # token` on a single machine must not pay for them.
    if not (ledger_of(settings).path / MEMBERSHIP_FILE).exists():
        return None
    from agent.cluster.admin import ClusterAdmin

    return ClusterAdmin(settings, clock).node(events)


def _prepare_ledger(coord: Coordinator) -> None:
    try:
        coord.ledger.ensure()
        coord.records.ensure_salt()
    except StoreError as exc:
        raise RefreshError(f"cannot use the state dir: {exc}") from exc


def refresh_now(settings: Settings) -> Outcome:
    """One refresh now, under the locks (``credsync refresh``)."""
    with coordinator(settings, SystemClock()) as coord:
        _prepare_ledger(coord)
        return coord.run(coord.best(), force=True)


def _fresh(settings: Settings, coord: Coordinator, best: Credential | None) -> str | None:
    now = coord.clock.now()
    if best is not None and best.expires_at > now and (
            not settings.refresh.enabled or now < coord.deadline(best)):
        return best.access_token
    return None


def valid_token(settings: Settings, note: Note | None = None) -> str:
    """An access token that is valid now, refreshing under the locks when it is due.

    With a ``note`` (``credsync token``), a token handed out without refreshing is remembered
    together with every input it was chosen from, for the next call's fast path."""
    if not settings.claude.config_dirs:
        raise RefreshError("the Claude side is off ([claude] config_dirs = []); for Codex's "
                           "token run credsync token --codex")
    with coordinator(settings, SystemClock()) as coord:
        # The install's jitter salt is written on first use: before the reads, not between them.
        _prepare_ledger(coord)
        if note is not None:
            note.watch(note_inputs(settings))  # before anything below reads them
        verdict = coord.verdict()
        best = verdict.winner
        token = _fresh(settings, coord, best)
        if token is not None and best is not None:
            if note is not None and note_allowed(settings):
                note.remember(token, _fresh_until(settings, coord, best))
            return token
        return _refreshed_token(coord, verdict)


def codex_token(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """``credsync token --codex``: a valid Codex access token, refreshing when it is due; of
    ``$CODEX_HOME``'s account when the homes hold several (else the first home's)."""
    if not settings.codex.enabled:
        raise RefreshError("no Codex home is kept: set [codex] homes in the config file (or "
                           "CODEX_HOME)")
    # The scope (last good copy, records, alert) of the running agent's lane for that account.
    account = _account_of_home(codex_accounts(settings), os.environ if env is None else env)
    with codex_coordinator(account.settings, SystemClock(), identity=account.identity) as coord:
        _prepare_ledger(coord)
        verdict = coord.verdict()
        best = verdict.winner
        token = _fresh(settings, coord, best)
        if token is not None:
            return token
        return _refreshed_token(coord, verdict, CODEX_LOGIN)


CLAUDE_LOGIN = "run `claude` and then /login in any session, or `claude auth login`"
CODEX_LOGIN = "run `codex login`"


def _refreshed_token(coord: Coordinator, verdict: Verdict, login: str = CLAUDE_LOGIN) -> str:
    best = verdict.winner
    if best is None:
        raise no_login(verdict, login)
    outcome = coord.run(best)
    cred = outcome.credential
    if outcome.kind in (Kind.RELOGIN, Kind.LOGGED_OUT, Kind.NONE):
        raise ReloginRequired(_relogin_message(outcome.message, login))
    if cred is not None and cred.expires_at > coord.clock.now():
        return cred.access_token  # refreshed, adopted, or still valid after a failed try
    raise RefreshError(f"the login has expired and could not be refreshed now "
                       f"({outcome.message}); credsync will retry")


def no_login(verdict: Verdict, login: str = CLAUDE_LOGIN) -> Exception:
    """What ``token`` says when the winner rule names no login."""
    if verdict.state is LoginState.UNREADABLE:
        return RefreshError(f"the login cannot be read now ({verdict.reason}); try again")
    if verdict.state is LoginState.LOGGED_OUT:
        return ReloginRequired(f"logged out: the login was removed from every store; {login} "
                               "to log in again")
    return ReloginRequired(_relogin_message(verdict.reason, login))


def note_inputs(settings: Settings) -> list[str]:
    """Every file the winner rule and the deadline read (the keychain aside)."""
    from agent.ledger import JOURNAL_FILE, LAST_GOOD_FILE, LOGIN_FILE, MEMORY_FILE

    ledger = ledger_of(settings)
    files = [ClaudeFileStore(d).path for d in settings.claude.config_dirs]
    files += [ledger.file(name) for name in (LAST_GOOD_FILE, LOGIN_FILE, MEMORY_FILE)]
    files.append(ledger.root / JOURNAL_FILE)
    return [str(f) for f in files]


def note_allowed(settings: Settings, platform: str = sys.platform) -> bool:
    # On macOS the keychain item is Claude Code's own store, which the note cannot check; a
    # debug log level asks for the full command's log lines.
    keychain_is_a_source = settings.claude.keychain and platform == "darwin"
    return not keychain_is_a_source and settings.agent.log_level != "debug"


def _fresh_until(settings: Settings, coord: Coordinator, best: Credential) -> float:
    if not settings.refresh.enabled:
        return best.expires_at
    return min(best.expires_at, coord.deadline(best))


def _relogin_message(why: str, login: str = CLAUDE_LOGIN) -> str:
    return f"a re-login is required ({why}): {login}"


def collect_status(settings: Settings, config_path: Path) -> Status:
    from agent.cli.status import collect, iso

    clock = SystemClock()
    with coordinator(settings, clock) as coord:
        status = collect(coord.writer, str(config_path), clock.now())
        status.extra["refresh"] = refresh_status(settings, coord, status, clock.now())
    from agent.notify.alerting import load_active_alert

    alert = load_active_alert(ledger_of(settings), settings.notify, clock)
    if alert is not None:
        status.extra["alert"] = {"event": alert.event, "title": alert.title,
                                 "since": iso(alert.since),
                                 "config_dirs": list(alert.affected_dirs)}
    from agent.cli.install import login_item_status

    status.extra["login_item"] = login_item_status(settings)
    from agent.cluster.membership import MEMBERSHIP_FILE

    if (ledger_of(settings).path / MEMBERSHIP_FILE).exists():
        from agent.cluster.node import status_of

        cluster = status_of(ledger_of(settings).path, clock.now())
        if cluster is not None:
            status.extra["cluster"] = cluster
    if not settings.claude.config_dirs:
        status.login_state = "off"  # [claude] config_dirs = []: nothing of Claude's is kept
    if settings.codex.enabled:
        # One entry per Codex account (agent.codex.groups); ``extra.codex`` stays the first
        # account's, as it was when there could be one only.
        accounts = [codex_status(account, config_path, status, clock, first=i == 0)
                    for i, account in enumerate(codex_accounts(settings))]
        status.extra["codex"] = accounts[0]
        if len(accounts) > 1:
            status.extra["codex_accounts"] = accounts
    return status


def codex_status(account: CodexAccount, config_path: Path, status: Status, clock: Clock,
                 first: bool = True) -> dict[str, object]:
    """One Codex account in ``credsync status``: its homes' stores among the rows; its login,
    refresh and alert returned (``extra.codex``)."""
    from agent.cli.status import collect, iso
    from agent.notify.alerting import load_active_alert
    from agent.notify.alerts import CODEX

    settings = account.settings
    with codex_coordinator(settings, clock, identity=account.identity) as coord:
        codex = collect(coord.writer, str(config_path), clock.now())
        refresh = refresh_status(settings, coord, codex, clock.now())
    best = codex.best
    status.stores.extend(codex.stores)
    resort = None if codex.running else _codex_agent_elsewhere(settings)
    if resort is not None:
        # An agent runs, with the homes sorted as they were when it started: this account's
        # scope is new since (a `codex login` to another account). It is running all the same.
        codex.running, codex.pid, codex.agent_state = True, resort, "running"
    if not settings.claude.config_dirs and first:
        # Only Codex lanes run: whether the agent runs is the first one's scope's to say.
        status.running, status.pid, status.agent_state = \
            codex.running, codex.pid, codex.agent_state
    out: dict[str, object] = {
        "login": codex.login_state, "fingerprint": best.fingerprint if best else None,
        "expires_at": iso(best.expires_at) if best else None,
        "reason": codex.extra.get("login", {}).get("reason", ""), "refresh": refresh,
        "agent": codex.agent_state, "homes": [str(h) for h in settings.codex.homes]}
    if resort is not None:
        out["resort"] = True
    alert = load_active_alert(codex_ledger_of(settings), settings.notify, clock, CODEX)
    if alert is not None:
        out["alert"] = {"title": alert.title, "since": iso(alert.since)}
    return out


def refresh_status(settings: Settings, coord: Coordinator, status: Status,
                   now: float) -> dict[str, object]:
    """The refresh part of ``credsync status``: the last problem, lifetime, next deadline."""
    from agent.cli.status import iso

    records = coord.records
    best = status.best
    out: dict[str, object] = {"enabled": settings.refresh.enabled}
    problem = records.problem
    if best is not None and problem.get("fingerprint") == best.fingerprint:
        out["state"], out["reason"] = problem.get("state"), problem.get("reason")
    lifetime, source = coord.schedule.lifetime(records.lifetime_s)
    out.update(lifetime_s=lifetime, lifetime_source=source,
               last_refresh_at=iso(records.refreshed_at))
    if best is not None and settings.refresh.enabled:
        out["next_refresh_at"] = iso(coord.deadline(best))
    return out
