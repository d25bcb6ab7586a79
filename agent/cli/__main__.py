"""``python -m agent.cli``: what the ``credsync`` script runs (the fast path, then click)."""

from agent.cli.fastpath import main

main()
