"""Credential stores: one interface, one implementation per kind of place a login lives."""

from agent.stores.base import Store

__all__ = ["Store"]
