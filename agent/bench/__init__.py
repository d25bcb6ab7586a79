"""Measurements of credsync (``python -m agent.bench.<name>``); nothing in the agent uses them."""
