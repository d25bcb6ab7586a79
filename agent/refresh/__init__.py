"""Proactive refresh: the coordinator (locks, journal, decisions) and the HTTP grant."""
