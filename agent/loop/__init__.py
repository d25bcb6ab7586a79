"""The agent's loop: one thread owns every side effect; what it is built from."""
