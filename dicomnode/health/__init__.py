"""Health: what the node knows of its peers (the last C-ECHO of each destination)."""

from dicomnode.health.destinations import DestinationChecker

__all__ = ["DestinationChecker"]
