"""The OpenAI Codex CLI's login (``$CODEX_HOME/auth.json`` or its keyring item), kept by the
same reconcile and refresh core as Claude Code's (``../shared/notes/codex.md``)."""
