"""Prometheus metrics of the node, computed at scrape time from the index (``/metrics``).

``registry(engine, layout, config)`` returns a fresh ``prometheus_client.CollectorRegistry``;
serve it with ``prometheus_client.generate_latest(registry(...))``. The metric names, labels and
meanings are :data:`SPECS` (each one's HELP text).
"""

from dicomnode.metrics.collector import SPECS, NodeCollector, Spec, registry

__all__ = ["SPECS", "NodeCollector", "Spec", "registry"]
