"""``node.receiver_processes``: several C-STORE SCP processes on one port, against a running
``serve``: concurrent associations all stored once, ``node.max_associations`` counted across
the processes, a receiver killed mid-transfer replaced without losing an acknowledged
instance, and no receiver left behind (holding the port) by a ``kill -9`` of ``serve``.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import multiprocessing
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from dicomnode.receiver.slots import SharedSlots
from tests.dcmtk import STORESCU
from tests.service.conftest import (
    AE_TITLE,
    RunningNode,
    acknowledged_files,
    echoscu,
    storescu,
    write_ct_series,
)


def receivers(node: RunningNode) -> list[psutil.Process]:
    """The node's receiver processes (spawned interpreters; not its resource tracker)."""
    assert node.process is not None
    return [child for child in psutil.Process(node.process.pid).children()
            if "multiprocessing.spawn" in " ".join(child.cmdline())]


def holder(node: RunningNode, processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` with an established connection on the node's port."""
    return [p for p in processes if any(
        c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == node.port
        for c in p.net_connections("tcp"))]


def wait_until(predicate: Any, timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def indexed(node: RunningNode) -> set[str]:
    return {row[0] for row in node.query("SELECT sop_instance_uid FROM instances")}


@contextmanager
def held_association(port: int) -> Iterator[Association]:
    """An association from this process, open until the block ends."""
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def test_four_concurrent_senders_are_served_by_every_receiver_process(make_node: Any,
                                                                     tmp_path: Path) -> None:
    node = make_node(node={"receiver_processes": 2})
    assert len(receivers(node)) == 2
    folders, uids = [], set()
    for number in range(4):
        folder = tmp_path / f"series{number}"
        uids |= set(write_ct_series(folder, 25).values())
        folders.append(folder)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(lambda f: storescu(node.port, f, calling=f"SENDER{f.name[-1]}"),
                             folders))
    for result in sent:
        assert result.returncode == 0, result.stdout
        assert len(acknowledged_files(result.stdout)) == 25
    assert indexed(node) == uids
    status = node.wait_for(lambda s: len(s["series"]) == 4 and all(
        x["state"] == "complete" for x in s["series"]), timeout=60)
    assert status["instances"] == 100
    associations = node.query("SELECT outcome, instances_stored FROM associations")
    assert sorted(associations) == [("released", 25)] * 4


def test_max_associations_counts_across_processes(make_node: Any) -> None:
    node = make_node(node={"receiver_processes": 2, "max_associations": 2})
    children = receivers(node)
    with held_association(node.port):
        first = wait_until(lambda: holder(node, children), what="the first association")[0]
        first.suspend()  # the next connection can only be accepted by the other process
        try:
            with held_association(node.port):
                both = wait_until(lambda: len(holder(node, children)) == 2, what="the second")
                assert both
                first.resume()
                # each process holds one association of the two allowed: a third is
                # refused by whichever accepts it
                refused = echoscu(node.port)
                assert refused.returncode != 0, refused.stdout
                assert "Association Rejected" in refused.stdout, refused.stdout
        finally:
            first.resume()
    assert echoscu(node.port).returncode == 0  # slots given back
    rejected = node.query("SELECT reason FROM associations WHERE outcome = 'rejected'")
    assert rejected == [("too-many-associations",)]


def test_shared_slots_never_exceed_the_limit_across_processes() -> None:
    """Processes taking and giving back slots as fast as they can never hold more than the
    limit between them (each checks the sum after counting itself)."""
    context = multiprocessing.get_context("spawn")
    counts = context.RawArray(ctypes.c_int, 4)
    holding, most = context.Value(ctypes.c_int, 0), context.Value(ctypes.c_int, 0)
    workers = [context.Process(target=_take_and_give, args=(counts, n, holding, most))
               for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert 1 <= most.value <= 3  # never passed
    assert SharedSlots.in_use(counts) == 0
    # the limit is the sum over processes: three processes' slots, then none for a fourth
    slots = [SharedSlots(counts, n, limit=3) for n in range(4)]
    assert [s.take() for s in slots] == [True, True, True, False]
    slots[0].give_back()
    assert slots[3].take() and SharedSlots.in_use(counts) == 3
    SharedSlots.clear(counts, 3)  # a dead process's slots come back
    assert slots[0].take()


def _take_and_give(counts: Any, number: int, holding: Any, most: Any) -> None:
    slots = SharedSlots(counts, number, limit=3)
    for _ in range(5_000):
        if slots.take():
            with holding.get_lock():
                holding.value += 1
                most.value = max(most.value, holding.value)
            with holding.get_lock():
                holding.value -= 1
            slots.give_back()


def test_a_receiver_killed_mid_transfer_is_replaced_and_loses_nothing_acknowledged(
        make_node: Any, tmp_path: Path) -> None:
    node = make_node(node={"receiver_processes": 2})
    children = receivers(node)
    uids = write_ct_series(tmp_path / "big", 400)
    log = tmp_path / "storescu.log"
    with open(log, "w") as out:
        sender = subprocess.Popen(
            [STORESCU, "-v", "-xv", "+sd", "+r", "-aet", "SENDER", "-aec", AE_TITLE,
             "127.0.0.1", str(node.port), str(tmp_path / "big")],
            stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            victim = wait_until(lambda: holder(node, children), what="the transfer")[0]
            wait_until(lambda: len(acknowledged_files(log.read_text())) >= 20,
                       what="20 acknowledged instances")
            os.kill(victim.pid, signal.SIGKILL)
            assert sender.wait(120) != 0  # the connection went down mid-transfer
        finally:
            if sender.poll() is None:
                sender.kill()
    acked = {uids[Path(f).name] for f in acknowledged_files(log.read_text())}
    assert 20 <= len(acked) < 400
    assert acked <= indexed(node)  # every instance answered 0x0000 is in the index
    # another process takes over at once; the dead one is replaced
    again = storescu(node.port, tmp_path / "big")
    assert again.returncode == 0, again.stdout
    assert indexed(node) == set(uids.values())
    replaced = wait_until(lambda: len(now := receivers(node)) == 2 and victim.pid not in {
        p.pid for p in now}, timeout=30, what="the replacement")
    assert replaced
    exited = [line for line in node.logs[-1].read_text().splitlines()
              if "receiver.process_exited" in line]
    assert len(exited) == 1 and "killed by signal 9" in exited[0], exited


def test_kill9_of_serve_leaves_no_receiver_holding_the_port(make_node: Any,
                                                           tmp_path: Path) -> None:
    node = make_node(node={"receiver_processes": 2})
    children = receivers(node)
    node.kill9()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.pid for p in alive]
    node.start()  # the same port binds again at once
    write_ct_series(tmp_path / "after", 3)
    assert storescu(node.port, tmp_path / "after").returncode == 0
    assert len(receivers(node)) == 2


@pytest.mark.parametrize("processes", [1])
def test_one_receiver_process_still_serves(make_node: Any, tmp_path: Path,
                                           processes: int) -> None:
    node = make_node(node={"receiver_processes": processes})
    assert len(receivers(node)) == processes
    uids = write_ct_series(tmp_path / "one", 5)
    assert storescu(node.port, tmp_path / "one").returncode == 0
    assert indexed(node) == set(uids.values())


def _nice(pid: int, thread: int | None = None) -> int:
    """A task's niceness from /proc (field 19 of stat; the name in field 2 may hold spaces)."""
    stat = Path(f"/proc/{pid}/task/{thread or pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])


def test_job_threads_run_at_jobs_nice_and_receivers_at_normal_priority(make_node: Any) -> None:
    """jobs.nice: the executor's job threads (and what they start, torch's threads) yield the
    CPU to the receiver processes while a job computes."""
    node = make_node(jobs={"enabled": True, "workers": 2, "nice": 7})
    assert node.process is not None
    log = node.logs[-1]

    def events() -> list[dict[str, Any]]:
        return [record for record in map(json.loads, log.read_text().splitlines()[:-1])
                if record.get("event") == "executor.worker_started"]

    started = wait_until(lambda: len(found := events()) == 2 and found, what="2 job threads")
    assert [e["nice"] for e in started] == [7, 7]
    assert [_nice(node.process.pid, e["thread"]) for e in started] == [7, 7]
    assert _nice(node.process.pid) == 0  # the main thread (timers, console) is not lowered
    assert [_nice(p.pid) for p in receivers(node)] == [0, 0]
