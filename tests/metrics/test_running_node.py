"""The metrics of a real node: ``dicomnode serve`` received instances from dcmtk's storescu,
and a registry built on its database (as the web server builds one) counts them exactly."""

from __future__ import annotations

from dicomnode.metrics import registry
from tests.metrics.conftest import ReceivedNode
from tests.metrics.scrape import samples, value


def test_a_scrape_counts_what_the_node_received(received_node: ReceivedNode) -> None:
    n = received_node.sent
    reg = registry(received_node.engine, received_node.layout, received_node.config)
    found = samples(reg)
    received = "dicomnode_instances_received_total"
    assert value(found, received, outcome="stored") == n
    assert value(found, received, outcome="duplicate") == n
    assert value(found, received, outcome="conflict") == 0
    assert value(found, received, outcome="refused") == 0
    assert value(found, "dicomnode_instances_held") == n
    held = received_node.node.query("SELECT SUM(size) FROM instances")[0][0]
    assert value(found, "dicomnode_instances_held_bytes") == held > 0
    # every instance was new once: the bytes received are the bytes held (none purged)
    assert value(found, "dicomnode_instances_received_bytes_total") == held
    assert value(found, "dicomnode_associations_total", outcome="released",
                 reason="released-by-peer") == 2
    assert value(found, "dicomnode_associations_open") == 0
    assert value(found, "dicomnode_storage_reserve_bytes") == 1_000_000  # base_config: 1 MB

    # the series completes after assembly.series_timeout; with jobs disabled its job waits
    status = received_node.node.wait_for(
        lambda s: s["series"] and s["series"][0]["state"] == "complete" and s["jobs"])
    assert [j["state"] for j in status["jobs"]] == ["complete"]
    found = samples(reg)
    assert value(found, "dicomnode_series", state="complete") == 1
    assert value(found, "dicomnode_series", state="receiving") == 0
    assert value(found, "dicomnode_jobs_queued", state="complete", pipeline="") == 1
    assert value(found, received, outcome="stored") == n  # unchanged by completion
