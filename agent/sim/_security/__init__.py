"""The parts of the ``/usr/bin/security`` double (``agent.sim.security`` is its public face).

- ``state``: the file-backed keychain (one JSON document, fcntl-locked, replaced atomically).
- ``oserr``: OSStatus codes, their messages, and the exit status ``security`` derives from them.
- ``render``: Apple's text formats (attributes, ``print_buffer``, access control lists).
- ``getopt``: BSD ``getopt(3)``, and the redaction of secrets from a recorded command line.
- ``table``: the command table (names, help, usage texts, option strings).
- ``access``: the checks securityd makes before a decrypt, a write or an unlock, and its prompts.
- ``commands``: the subcommands; ``tool``: ``main``, ``-i`` line reading and splitting.

Standard library only, and nothing from the rest of ``agent``: every invocation of the executable
imports this package, so it must start fast and cannot depend on the agent's configuration.
"""
