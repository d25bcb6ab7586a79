"""Claude Code's own Windows Credential Manager items, kept the way the CLI keeps them.

``identity`` says whether the CLI uses Credential Manager for a config dir and names its items,
``credman`` is the only module that calls the Windows API (behind ``CredentialVault``),
``chunks`` reads and writes a document as the CLI lays it out over one or more items,
``store`` is the Store (with the CLI's plaintext fallback).
"""
