"""Research routing: the source series forwarded by rule (``routing.rules[].forward``), and
de-identification on the way to destinations that name a profile (``deidentify``).

Forwards are deliveries named ``forward:<destination>`` on the series' job, so they share the
dispatcher's retries, dead letters and audit with results. :mod:`dicomnode.forward.prepare`
turns what a delivery holds into what the destination may see.
"""

from dicomnode.forward.prepare import (
    FORWARD_PREFIX,
    Prepared,
    forward_delivery,
    forwarded_destination,
    prepare,
    record_pseudonyms,
    source_datasets,
)

__all__ = ["FORWARD_PREFIX", "Prepared", "forward_delivery", "forwarded_destination",
           "prepare", "record_pseudonyms", "source_datasets"]
