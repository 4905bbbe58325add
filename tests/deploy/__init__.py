"""Checks of deploy/: the systemd units and the compose file."""
