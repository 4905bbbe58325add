"""Scale-out (``jobs.backend: celery``): throughput with one and with two ``dicomnode worker``
processes on the same input, and what the broker adds to each job.

Everything real and on loopback: a RabbitMQ and a PostgreSQL started for the run (as the
tests do), Orthanc as the destination, ``dicomnode serve`` and CPU workers running a
random-weight VertebralBodiesCT-shaped nnU-Net (coarse target spacing: seconds per job).

* ``throughput_2_workers_vs_1`` (series per minute): ``--series`` small CT series sent in one
  association once the workers are up, so a backlog forms at once; the window runs from the
  first claim to the last job done. The reference is the same with one worker. On a machine
  with N cores the ratio is bounded by the cores each job can use: two workers on 2 cores share
  them with serve, Orthanc, PostgreSQL and RabbitMQ.
* ``broker_overhead_publish_to_start`` (s, median): an idle worker, one series at a time; from
  serve's publish (``published_at``, after the broker confirmed it) to the worker's claim
  (``loading``). The reference is the local executor's routed → loading on the same series.

    .venv/bin/python benchmarks/scale.py [--json PATH] [--series 12] [--probes 4]

``--json`` writes a list of {"name", "ours", "reference", "unit", "ratio"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402

from benchmarks.e2e import build_model  # noqa: E402
from benchmarks.report import report  # noqa: E402
from tests.distributed.conftest import Cluster, purge, write_series  # noqa: E402
from tests.e2e.conftest import node_config  # noqa: E402
from tests.orthanc import Orthanc  # noqa: E402
from tests.postgres import Postgres, new_database  # noqa: E402
from tests.rabbitmq import RabbitMQ  # noqa: E402
from tests.service.conftest import RunningNode, example_ct, free_port, storescu  # noqa: E402


def _moment(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class Bench:
    def __init__(self, work: Path, broker: RabbitMQ, postgres: Postgres, orthanc: Orthanc,
                 models: Path):
        self.work, self.broker, self.postgres = work, broker, postgres
        self.orthanc, self.models = orthanc, models
        self.runs = 0

    def node(self, backend: str) -> RunningNode:
        self.runs += 1
        port = free_port()
        jobs: dict[str, Any] = {"backend": backend, "poll_interval": 0.2}
        storage: dict[str, Any] = {}
        if backend == "celery":
            purge(self.broker)
            jobs.update(broker_url=self.broker.url, lease_seconds=30)
            storage["database_url"] = new_database(self.postgres, f"scale_{self.runs}")
        else:
            jobs["workers"] = 1
        root = self.work / f"run{self.runs}"
        root.mkdir()
        # series_timeout 3 s: 1 s can split a series on a loaded machine
        node = RunningNode(root, node_config(port, self.orthanc, self.models, jobs=jobs,
                                             storage=storage,
                                             assembly={"series_timeout": 3.0}), port)
        node.start()
        return node

    def stages(self, node: RunningNode) -> list[dict[str, Any]]:
        rows = node.query("SELECT state, stage_times, published_at FROM jobs ORDER BY id")
        out = []
        for state, times, published in rows:
            times = times if isinstance(times, dict) else json.loads(times)  # SQLite: text
            out.append({"state": state, "times": times, "published": published})
        return out

    def throughput(self, workers: int, folder: Path, count: int) -> float:
        """Series per minute with ``workers`` workers draining a backlog of ``count``."""
        node = self.node("celery")
        cluster = Cluster(node, self.broker)
        try:
            started = [cluster.add_worker(f"w{i}", ready=False) for i in range(workers)]
            for worker in started:
                worker.wait_ready()
            sent = storescu(node.port, folder)
            assert sent.returncode == 0, sent.stdout
            jobs = cluster.wait_jobs(count, timeout=1800)
            assert all(j["state"] == "done" for j in jobs), jobs
            stages = self.stages(node)
            first = min(_moment(s["times"]["loading"]) for s in stages)
            last = max(_moment(s["times"]["done"]) for s in stages)
            return count / ((last - first) / 60)
        finally:
            for worker in cluster.workers:
                worker.stop(timeout=60)
            node.stop()

    def overhead(self, backend: str, folders: list[Path]) -> list[float]:
        """Seconds from hand-over (publish, or routed for the local executor) to the claim."""
        node = self.node(backend)
        cluster = Cluster(node, self.broker)
        try:
            if backend == "celery":
                cluster.add_worker("w0")
            for index, folder in enumerate(folders):
                assert storescu(node.port, folder).returncode == 0
                cluster.wait_jobs(index + 1, timeout=600)
            waits = []
            for job in self.stages(node):
                start = (job["published"].timestamp() if backend == "celery"
                         else _moment(job["times"]["routed"]))
                waits.append(_moment(job["times"]["loading"]) - start)
            return waits
        finally:
            for worker in cluster.workers:
                worker.stop(timeout=60)
            node.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--series", type=int, default=12, help="series in the backlog")
    parser.add_argument("--probes", type=int, default=4, help="series sent one at a time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dicomnode-scale-") as tmp:
        work = Path(tmp)
        sources: list[pydicom.Dataset] = example_ct()
        backlog = work / "backlog"
        for i in range(args.series):
            write_series(backlog / f"s{i}", sources, 8)
        probes = [work / "probes" / f"p{i}" for i in range(args.probes)]
        for folder in probes:
            write_series(folder, sources, 8)
        _, models = build_model(work, "random", (4.0, 3.0, 3.0))
        broker, postgres = RabbitMQ(work / "rabbitmq"), Postgres(work / "postgres")
        orthanc = Orthanc(work / "orthanc")
        broker.start()
        postgres.start()
        orthanc.start()
        try:
            bench = Bench(work, broker, postgres, orthanc, models)
            one = bench.throughput(1, backlog, args.series)
            two = bench.throughput(2, backlog, args.series)  # the same files, a fresh node
            celery = bench.overhead("celery", probes)
            local = bench.overhead("local", probes)
        finally:
            orthanc.stop()
            postgres.remove()
            broker.remove()
    rows = [
        {"name": "throughput_2_workers_vs_1", "ours": round(two, 2), "reference": round(one, 2),
         "unit": "series/min"},
        {"name": "broker_overhead_publish_to_start", "ours": round(statistics.median(celery), 3),
         "reference": round(statistics.median(local), 3), "unit": "s"},
    ]
    print(f"{args.series} series backlog: 1 worker {one:.1f}/min, 2 workers {two:.1f}/min; "
          f"publish → claim {[round(w, 3) for w in celery]} s, local routed → claim "
          f"{[round(w, 3) for w in local]} s")
    report(rows, args.json, reference_label="1 worker / local")
    return 0


if __name__ == "__main__":
    sys.exit(main())
