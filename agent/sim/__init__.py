"""A faithful world to test credsync in, shared by tests, benchmarks and the demo.

- ``agent.sim.server.OAuthServer``: a real HTTP token server on 127.0.0.1 with strict single-use
  refresh-token rotation, family revocation on reuse, both request styles, failure injection
  (``agent.sim.faults.Fault``) and a request log.
- ``agent.sim.session.SimSession``: a Claude Code session simulated from the CLI's documented
  behaviour (refresh window, lock directories, compare-and-swap save, clearing on invalid_grant).
- ``OAuthServer(style="codex")`` with ``agent.sim.jwt``: OpenAI's token endpoint as Codex CLI
  meets it; ``agent.sim.codex_session.CodexSession``: a Codex CLI process (in-memory snapshot,
  5-minute window, guarded reload, no refresh lock, Codex's two write locks in
  ``agent.sim.codex_store``); ``agent.sim.codex_world``: many of them in several homes.

Nothing is imported here on purpose: both modules run as ``python -m`` programs, and importing
them from the package would load them twice. Nothing in the agent itself imports this package.
"""
