"""Retention: when received instances and results are deleted (never before delivery)."""

from dicomnode.retention.purge import Retention

__all__ = ["Retention"]
