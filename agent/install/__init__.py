"""The login item: systemd user unit, LaunchAgent, Windows logon task."""
