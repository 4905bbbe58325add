"""Time of one ``/metrics`` scrape over a large index, and the statements it sends.

Builds a fresh SQLite index (or, with ``--postgresql``, one on a throw-away PostgreSQL server)
with the store's own tables: ``--series`` complete series of 10 instances each, two jobs per
series with stage times of their own (vertebral-bodies-ct, done), a delivery per job, an
association per series and a rejection per 100 series; then scrapes it ``--repeat`` times
through ``generate_latest`` and prints the median and best time, the median CPU time of this
process (steadier than wall time on a loaded machine; PostgreSQL's own work is not in it) and
the statement count of one scrape.

    .venv/bin/python -m tests.metrics.scrape_timing [--series 10000] [--repeat 7] [--postgresql]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from prometheus_client import generate_latest
from sqlalchemy import Engine, Table, event, insert

from dicomnode.config import parse_config
from dicomnode.metrics import registry
from dicomnode.storage import StorageLayout
from dicomnode.store import (
    Association,
    Delivery,
    Instance,
    Job,
    Rejection,
    Series,
    Study,
    create_schema,
    make_engine,
)
from tests.postgres import Postgres, new_database

BASE = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
#: When a job entered each state, in seconds after it was created.
STAGES = (("complete", 0.0), ("routed", 0.1), ("loading", 1.0), ("segmenting", 3.0),
          ("encoding", 13.0), ("dispatching", 14.0), ("done", 14.5))


def _stamps(job: int) -> dict[str, str]:
    """Stage times of their own for each job, as the worker writes them (microseconds)."""
    start = BASE + timedelta(seconds=37.000123 * job)
    return {state: (start + timedelta(seconds=t * (1 + job % 7 / 10))).isoformat()
            for state, t in STAGES}


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def fill(engine: Engine, series: int) -> None:
    """The large index described above (test_index_metrics' statement-count test uses it too):
    ``series`` series, 10 instances each, 2 done jobs each with one delivery."""
    jobs = 2 * series
    with engine.begin() as conn:
        conn.execute(insert(_table(Study)).values(id=1, study_instance_uid="1",
                                                    first_received_at=BASE))
        conn.execute(insert(_table(Series)), [
            {"id": i, "series_instance_uid": f"1.{i}", "study_id": 1, "state": "complete",
             "instance_count": 10, "revision": 1, "first_received_at": BASE,
             "last_received_at": BASE, "is_image": True, "uid_synthesized": False}
            for i in range(1, series + 1)])
        conn.execute(insert(_table(Instance)), [
            {"sop_instance_uid": f"1.{i}.{k}", "series_id": i, "sop_class_uid": "1",
             "transfer_syntax_uid": "1", "path": "p", "size": 100, "received_at": BASE,
             "receive_count": 1} for i in range(1, series + 1) for k in range(10)])
        conn.execute(insert(_table(Job)), [
            {"id": j, "series_id": 1 + j % series, "revision": 1, "state": "done",
             "instance_count": 10, "created_at": BASE, "updated_at": BASE,
             "stage_times": _stamps(j), "attempts": 0, "priority": 0, "destinations": ["pacs"],
             "pipeline": "vertebral-bodies-ct"} for j in range(1, jobs + 1)])
        conn.execute(insert(_table(Delivery)), [
            {"job_id": j, "destination": "pacs", "state": "delivered", "attempts": 1,
             "next_attempt_at": BASE} for j in range(1, jobs + 1)])
        conn.execute(insert(_table(Association)), [
            {"calling_ae_title": "SCU", "called_ae_title": "DICOMNODE", "address": "127.0.0.1",
             "started_at": BASE, "outcome": "released", "reason": "released-by-peer",
             "duplicates": 0} for _ in range(series)])
        conn.execute(insert(_table(Rejection)), [
            {"received_at": BASE, "kind": "truncated-dataset", "message": "x", "status": 0xC000}
            for _ in range(series // 100)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--postgresql", action="store_true",
                        help="the index on a throw-away PostgreSQL server (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as cleanup:
        url = ""
        if args.postgresql:
            server = Postgres(Path(tmp) / "postgres")
            server.start()
            cleanup.callback(server.remove)
            url = new_database(server, "scrape_timing")
        config = parse_config({
            "storage": {"path": str(Path(tmp) / "var"), "database_url": url},
            "models": {"path": str(Path(tmp) / "models"), "device": "cpu"},
            "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS",
                                      "host": "127.0.0.1", "port": 104}},
            "routing": {"rules": [{"name": "ct", "match": {"modality": ["CT"]},
                                   "pipelines": ["vertebral-bodies-ct"],
                                   "destinations": ["pacs"]}]},
        }, Path(tmp) / "config.yaml")
        layout = StorageLayout.of(config.storage)
        engine = make_engine(layout.database_url)
        try:
            create_schema(engine)
            fill(engine, args.series)
            reg = registry(engine, layout, config)
            generate_latest(reg)  # warm: connection pool, statement cache
            statements: list[str] = []
            event.listen(engine, "before_cursor_execute",
                         lambda _c, _k, statement, *_a: statements.append(statement))
            times, cpu = [], []
            for _ in range(args.repeat):
                statements.clear()
                started, used = time.perf_counter(), time.process_time()
                generate_latest(reg)
                times.append(time.perf_counter() - started)
                cpu.append(time.process_time() - used)
        finally:
            engine.dispose()
    print(f"{engine.dialect.name}: {args.series} series, {2 * args.series} jobs, "
          f"{10 * args.series} instances: scrape median {statistics.median(times) * 1000:.0f} "
          f"ms, best {min(times) * 1000:.0f} ms (this process's CPU: median "
          f"{statistics.median(cpu) * 1000:.0f} ms), {len(statements)} statements")


if __name__ == "__main__":
    main()
