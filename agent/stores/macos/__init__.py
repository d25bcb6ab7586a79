"""Claude Code's own macOS Keychain items, kept through ``/usr/bin/security`` only.

``identity`` names the item as the CLI does, ``security`` runs the tool (the only module that
spawns it), ``overflow`` follows the CLI's overflow items (read only), ``store`` is the Store,
``foreign`` diagnoses an item another program made.
"""
