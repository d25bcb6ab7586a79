"""One exception tree for credsync.

    CredsyncError
    ├── ConfigError          bad configuration file or environment variable
    ├── StoreError           a credential store could not be read or written
    │   └── KeychainUnavailable   no usable OS keychain, locked, or timed out
    ├── LockError            a lock could not be taken within its deadline
    ├── RefreshError         the token endpoint did not give a new credential
    │   ├── TransientRefreshError  network, timeout, 5xx, 429: retry later
    │   └── InvalidGrantError      the refresh token was rejected: terminal for it
    ├── ReloginRequired      no valid login is left anywhere: the user must log in
    ├── AgentAlreadyRunning  another agent holds this state dir
    ├── InstallError         the login item could not be installed or removed
    └── ClusterError         the cluster (Redis) refused, failed, or holds what does not open
        └── ClusterUnavailable   Redis could not be reached or did not answer in time:
                                 while other members are known, nobody refreshes

Foreign exceptions are mapped at the boundary with ``raise ... from``. Messages never hold a
token; they name what failed and, where there is one, what to do.
"""

from __future__ import annotations


class CredsyncError(Exception):
    """Base of every error credsync raises on purpose."""


class ConfigError(CredsyncError):
    """Configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class StoreError(CredsyncError):
    pass


class KeychainUnavailable(StoreError):
    pass


class LockError(CredsyncError):
    pass


class RefreshError(CredsyncError):
    pass


class TransientRefreshError(RefreshError):
    """``may_have_rotated``: the request may have reached the server and its answer was lost
    (read timeout, dropped connection, unreadable success); the refresh token may be spent."""

    def __init__(self, message: str, retry_after_s: float | None = None,
                 may_have_rotated: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.may_have_rotated = may_have_rotated


class InvalidGrantError(RefreshError):
    pass


class ReloginRequired(CredsyncError):
    pass


class AgentAlreadyRunning(CredsyncError):
    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class InstallError(CredsyncError):
    """A login item (systemd unit, LaunchAgent, scheduled task) could not be set up or removed."""


class ClusterError(CredsyncError):
    """The shared cluster refused an operation, or what it holds does not open (wrong key,
    altered, replayed). Never names a token; names the Redis URL only without secrets."""


class ClusterUnavailable(ClusterError):
    """Redis could not be reached, or did not answer within its deadline. The outcome of a
    write that timed out is unknown: treat a claim as possibly taken."""
