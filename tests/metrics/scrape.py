"""Reading a registry back the way a scraper does: the text exposition, parsed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]


def families(reg: CollectorRegistry) -> dict[str, Metric]:
    """The families of one scrape, by family name (counters without ``_total``)."""
    text = generate_latest(reg).decode("utf-8")
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(reg: CollectorRegistry) -> dict[Key, float]:
    """Every sample of one scrape: (sample name, sorted labels) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families(reg).values() for s in family.samples}


def value(found: dict[Key, float], name: str, **labels: str) -> float:
    """One sample's value; KeyError naming what is there when it is missing."""
    key = (name, tuple(sorted(labels.items())))
    if key not in found:
        near = sorted(k for k in found if k[0] == name)
        raise KeyError(f"{key} not scraped; {name} has {near}")
    return found[key]
