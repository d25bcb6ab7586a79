"""credsync: keep every copy of a Claude Code OAuth login fresh and in step."""

__version__ = "0.1.0"
