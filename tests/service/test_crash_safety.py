"""Crash safety: ``kill -9`` of a real ``dicomnode serve`` loses nothing it acknowledged.

The transfer and timer tests run with the index on SQLite and on PostgreSQL
(``database_url``, tests/conftest.py).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.dcmtk import STORESCU
from tests.service.conftest import AE_TITLE, acknowledged_files, write_ct_series


@pytest.mark.parametrize("graceful", [False, True], ids=["kill-9", "sigterm"])
def test_stop_during_transfer_loses_no_acknowledged_instance(
        make_node: Any, tmp_path: Path, ct_sources: list[Any], graceful: bool,
        database_url: str) -> None:
    node = make_node(assembly={"series_timeout": 60}, storage={"database_url": database_url})
    folder = tmp_path / "ct"
    uids = write_ct_series(folder, 400, sources=ct_sources)
    log = tmp_path / "storescu.log"
    with open(log, "w") as handle:
        sender = subprocess.Popen(
            [STORESCU, "-v", "-xv", "+sd", "-aec", AE_TITLE, "127.0.0.1", str(node.port),
             str(folder)], stdout=handle, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while len(acknowledged_files(log.read_text())) < 40:
            assert time.monotonic() < deadline and sender.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        if graceful:  # SIGTERM: open associations get a short grace, then are aborted
            assert node.stop() == 0
            assert (node.spool / ".clean-shutdown").exists()
        else:
            node.kill9()  # in the middle of the association
        sender.wait(timeout=60)
    acked = {uids[Path(f).name] for f in acknowledged_files(log.read_text())}
    assert len(acked) >= 40
    if not graceful:  # (a graceful stop may let a fast sender finish within its grace)
        assert len(acked) < 400, "the kill must land during the transfer"

    # No partial file ever appears in a series folder; leftovers only in .incoming/.
    for path in node.spool.glob("*/*/*"):
        assert path.suffix == ".dcm"
        pydicom.dcmread(path)  # complete, readable

    node.start()
    indexed = {uid for (uid,) in node.query("select sop_instance_uid from instances")}
    assert acked <= indexed, f"lost {len(acked - indexed)} acknowledged instances"
    for uid in acked:
        (path,) = node.query(f"select path from instances where sop_instance_uid = '{uid}'")[0]
        assert (node.spool / path).is_file()
    assert not list(node.spool.glob(".incoming/*")), "partial files are cleared at start-up"
    status = node.status()
    assert status["instances"] == len(indexed)
    if not graceful:
        assert status["associations"]["by_outcome"].get("aborted", 0) >= 1  # the cut-off one


def test_series_timers_rearmed_after_kill9(make_node: Any, tmp_path: Path,
                                           ct_sources: list[Any], database_url: str) -> None:
    node = make_node(assembly={"series_timeout": 3}, storage={"database_url": database_url})
    write_ct_series(tmp_path / "ct", 3, sources=ct_sources)
    sent = subprocess.run([STORESCU, "-xv", "+sd", "-aec", AE_TITLE, "127.0.0.1",
                           str(node.port), str(tmp_path / "ct")], capture_output=True, text=True)
    assert sent.returncode == 0, sent.stderr
    node.kill9()  # before the series is quiet for 3 s
    assert node.query("select state from series") == [("receiving",)]
    timers = node.query("select id from apscheduler_jobs")
    assert len(timers) == 1 and timers[0][0].startswith("series:")  # persisted

    node.start()
    status = node.wait_for(lambda s: s["jobs"], timeout=60)
    assert status["series"][0]["state"] == "complete"
    assert [(j["state"], j["instances"]) for j in status["jobs"]] == [("complete", 3)]
    assert node.query("select count(*) from apscheduler_jobs where id like 'series:%'") == [(0,)]


def test_spool_files_missing_from_the_index_are_reindexed(
        make_node: Any, tmp_path: Path, ct_sources: list[Any]) -> None:
    """Power-cut model: the index lost its last commits (SQLite synchronous=NORMAL) but the
    synced spool files are there; the next start re-indexes them."""
    node = make_node(assembly={"series_timeout": 30})
    uids = write_ct_series(tmp_path / "ct", 5, sources=ct_sources)
    sent = subprocess.run([STORESCU, "-xv", "+sd", "-aec", AE_TITLE, "127.0.0.1",
                           str(node.port), str(tmp_path / "ct")], capture_output=True, text=True)
    assert sent.returncode == 0, sent.stderr
    node.kill9()
    node.query("delete from instances where id > 3")  # the lost commits
    node.query("update series set instance_count = 3")
    assert node.query("select count(*) from instances") == [(3,)]

    node.start()
    indexed = {uid for (uid,) in node.query("select sop_instance_uid from instances")}
    assert indexed == set(uids.values())
    assert node.status()["series"][0]["instances"] == 5


def test_a_half_open_connection_does_not_hold_up_a_graceful_stop(make_node: Any) -> None:
    """A peer that connects but never sends A-ASSOCIATE-RQ (a port probe, a load balancer's
    health check) has nothing acknowledged; the stop closes it rather than waiting for it."""
    node = make_node()
    probe = socket.create_connection(("127.0.0.1", node.port))
    try:
        time.sleep(0.5)  # let the node's acceptor thread take the connection
        started = time.monotonic()
        assert node.stop() == 0
        assert time.monotonic() - started < 4.0  # the association grace alone is 5 s
    finally:
        probe.close()
