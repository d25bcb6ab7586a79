"""Cross-process locks: credsync's own (portalocker) and the CLI's mkdir locks."""
