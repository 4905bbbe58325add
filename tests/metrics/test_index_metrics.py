"""The metrics against an index with known rows: every sample's exact value, as scraped.

The index is written with the store's own models (on SQLite and on a throw-away PostgreSQL),
then read back through ``generate_latest`` and prometheus_client's text parser, as Prometheus
would read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import prometheus_client
import pytest
from sqlalchemy import Engine, Table, event, insert
from sqlalchemy.orm import Session

from dicomnode.config import Config, parse_config
from dicomnode.metrics import SPECS, NodeCollector, registry
from dicomnode.metrics.collector import INFERENCE_BUCKETS, STAGE_BUCKETS
from dicomnode.models.registry import MANIFEST
from dicomnode.storage import StorageLayout, free_bytes
from dicomnode.store import (
    Association,
    AssociationOutcome,
    Delivery,
    DeliveryState,
    DestinationHealth,
    Instance,
    Job,
    JobState,
    Rejection,
    Series,
    SeriesState,
    Study,
    create_schema,
    make_engine,
)
from tests.metrics.scrape import families, samples, value
from tests.metrics.scrape_timing import fill as fill_large

BASE = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
VBCT, TSS, SPINEPS = "vertebral-bodies-ct", "totalspineseg", "spineps"


@dataclass
class Index:
    engine: Engine
    layout: StorageLayout
    config: Config

    def registry(self) -> prometheus_client.CollectorRegistry:
        return registry(self.engine, self.layout, self.config)


def make_config(tmp_path: Path, database_url: str, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "storage": {"path": str(tmp_path / "var"), "database_url": database_url,
                    "min_free": "3 MB"},
        "models": {"path": str(tmp_path / "models"), "device": "cpu"},
        "destinations": {
            "pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            "archive": {"type": "dicomweb", "url": "http://127.0.0.1:1/dicom-web"},
        },
        "routing": {"rules": [
            {"name": "ct", "match": {"modality": ["CT"]}, "pipelines": [VBCT],
             "destinations": ["pacs"]},
            {"name": "mr", "match": {"modality": ["MR"]}, "pipelines": [SPINEPS],
             "destinations": ["archive"]},
        ]},
        **sections,
    }
    return parse_config(data, tmp_path / "config.yaml")


@pytest.fixture
def empty_index(tmp_path: Path, database_url: str) -> Iterator[Index]:
    config = make_config(tmp_path, database_url)
    layout = StorageLayout.of(config.storage)
    engine = make_engine(layout.database_url)
    create_schema(engine)
    yield Index(engine, layout, config)
    engine.dispose()


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def _at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def _stamps(**seconds: float) -> dict[str, str]:
    return {state: _at(t).isoformat() for state, t in seconds.items()}


#: Jobs: (state, pipeline, seconds at which each state was entered).
JOBS: list[tuple[JobState, str | None, dict[str, str]]] = [
    (JobState.DONE, VBCT, _stamps(complete=0, routed=0.02, loading=1, segmenting=3, encoding=13,
                                  dispatching=14, done=14.5, purged=100)),
    (JobState.FAILED, VBCT, _stamps(complete=0, routed=0.5, loading=1, segmenting=2.5,
                                    failed=42.5)),
    (JobState.SEGMENTING, TSS, _stamps(complete=0, routed=0.1, loading=1, segmenting=4)),
    (JobState.IGNORED, None, _stamps(complete=0, ignored=0.01)),
    (JobState.COMPLETE, None, _stamps(complete=0)),
    (JobState.DEAD, VBCT, _stamps(complete=0, routed=0.05, loading=0.3, segmenting=0.8,
                                  encoding=700, dispatching=701, dead=4000)),
    (JobState.ROUTED, TSS, _stamps(complete=0, routed=1)),
    (JobState.DISPATCHING, VBCT, _stamps(complete=0, routed=0.1, loading=0.2, segmenting=0.3,
                                         encoding=5.3, dispatching=6.3)),
]
#: Deliveries: (index into JOBS, destination, state, attempts).
DELIVERIES = [
    (0, "pacs", DeliveryState.DELIVERED, 2),
    (5, "pacs", DeliveryState.DEAD, 3),
    (5, "sender:MODALITY", DeliveryState.DEAD, 1),
    (7, "pacs", DeliveryState.PENDING, 1),
    (7, "archive", DeliveryState.PENDING, 0),
]


def fill(index: Index) -> None:
    """The known rows the expectations below are computed from."""
    with Session(index.engine) as session, session.begin():
        study = Study(study_instance_uid="1.2.3", first_received_at=BASE)
        session.add(study)
        session.flush()
        series = []
        # complete with 5 held, complete and purged (3 stored, none held), receiving with 2.
        for number, (series_state, stored, held, size) in enumerate(
                [(SeriesState.COMPLETE, 5, 5, 1000), (SeriesState.COMPLETE, 3, 0, 0),
                 (SeriesState.RECEIVING, 2, 2, 500)]):
            row = Series(series_instance_uid=f"1.2.3.{number}", study_id=study.id,
                         state=series_state,
                         instance_count=stored, bytes_received=stored * (size or 800),
                         first_received_at=BASE, last_received_at=BASE)
            session.add(row)
            session.flush()
            series.append(row)
            for k in range(held):
                session.add(Instance(sop_instance_uid=f"1.2.3.{number}.{k}", series_id=row.id,
                                     sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                     transfer_syntax_uid="1.2.840.10008.1.2.1",
                                     path=f"a/b/{number}.{k}.dcm", size=size, received_at=BASE))
        for outcome, reason, duplicates in [
                (AssociationOutcome.RELEASED, "released-by-peer", 1),
                (AssociationOutcome.RELEASED, "released-by-peer", 2),
                (AssociationOutcome.REJECTED, "calling-ae-not-allowed", 0),
                (AssociationOutcome.ABORTED, "node-restarted", 0),
                (AssociationOutcome.OPEN, None, 1)]:
            session.add(Association(calling_ae_title="SCU", called_ae_title="DICOMNODE",
                                    address="127.0.0.1", started_at=BASE, outcome=outcome,
                                    reason=reason, duplicates=duplicates))
        for kind, status in [("truncated-dataset", 0xC000), ("truncated-dataset", 0xC000),
                             ("uid-conflict", 0xC010), ("unsupported-sop-class", 0x0122),
                             ("media-storage-directory", 0xB007)]:
            session.add(Rejection(received_at=BASE, kind=kind, message="test", status=status))
        jobs = []
        for job_state, pipeline, stamps in JOBS:
            job = Job(series_id=series[0].id, revision=1, state=job_state, instance_count=5,
                      created_at=BASE, updated_at=BASE, stage_times=stamps, pipeline=pipeline)
            session.add(job)
            jobs.append(job)
        session.flush()
        for job_index, destination, delivery_state, attempts in DELIVERIES:
            session.add(Delivery(job_id=jobs[job_index].id, destination=destination,
                                 state=delivery_state, attempts=attempts, next_attempt_at=BASE))
        session.add(DestinationHealth(destination="pacs", reachable=True, detail="ok",
                                      checked_at=_at(10)))
        session.add(DestinationHealth(destination="oldpacs", reachable=False, detail="refused",
                                      checked_at=_at(20)))
    # A complete copy of one registry model.
    model = index.config.models.path / "vertebral-bodies-ct-m"
    folder = model / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
    folder.mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        (folder / name).write_text("{}")
    (model / MANIFEST).write_text(json.dumps({"version": "test"}))


def _histogram(found: dict[Any, float], name: str, bounds: tuple[float, ...],
               **labels: str) -> tuple[list[float], float, float]:
    """(cumulative bucket counts with +Inf last, count, sum) of one histogram series."""
    buckets = [value(found, f"{name}_bucket", le=le, **labels)
               for le in [*map(prometheus_client.utils.floatToGoString, bounds), "+Inf"]]
    return buckets, value(found, f"{name}_count", **labels), value(found, f"{name}_sum", **labels)


def test_every_sample_is_what_the_index_holds(empty_index: Index) -> None:
    fill(empty_index)
    found = samples(empty_index.registry())

    received = "dicomnode_instances_received_total"
    # stored counts the purged series' 3 too; refused leaves out the negotiation refusal.
    assert {o: value(found, received, outcome=o)
            for o in ("stored", "duplicate", "conflict", "refused")} == {
        "stored": 10, "duplicate": 4, "conflict": 1, "refused": 3}
    refusals = {dict(k[1])["kind"]: v for k, v in found.items()
                if k[0] == "dicomnode_refusals_total"}
    assert {k: v for k, v in refusals.items() if v} == {
        "truncated-dataset": 2, "uid-conflict": 1, "unsupported-sop-class": 1,
        "media-storage-directory": 1}
    assert refusals["disk-below-reserve"] == 0  # every kind is there, at 0 until it happens
    assert value(found, "dicomnode_instances_held") == 7
    assert value(found, "dicomnode_instances_held_bytes") == 5 * 1000 + 2 * 500
    # received counts the purged series' bytes too (3 instances of 800 bytes).
    assert value(found, "dicomnode_instances_received_bytes_total") == 5000 + 2400 + 1000
    assert value(found, "dicomnode_series", state="complete") == 2
    assert value(found, "dicomnode_series", state="receiving") == 1

    associations = {dict(k[1])["outcome"] + "/" + dict(k[1])["reason"]: v
                    for k, v in found.items() if k[0] == "dicomnode_associations_total"}
    assert associations == {"released/released-by-peer": 2,
                            "rejected/calling-ae-not-allowed": 1, "aborted/node-restarted": 1}
    assert value(found, "dicomnode_associations_open") == 1

    jobs = {(dict(k[1])["state"], dict(k[1])["pipeline"]): v for k, v in found.items()
            if k[0] == "dicomnode_jobs_total"}
    assert {k: v for k, v in jobs.items() if v} == {
        ("done", VBCT): 1, ("failed", VBCT): 1, ("dead", VBCT): 1, ("ignored", ""): 1}
    # configured pipelines are shown before their first job; every end state is
    assert jobs[("done", SPINEPS)] == 0 and jobs[("superseded", TSS)] == 0
    assert {s for s, _ in jobs} == {"done", "failed", "dead", "cancelled", "ignored",
                                    "superseded"}
    queued = {(dict(k[1])["state"], dict(k[1])["pipeline"]): v for k, v in found.items()
              if k[0] == "dicomnode_jobs_queued"}
    assert {k: v for k, v in queued.items() if v} == {
        ("complete", ""): 1, ("segmenting", TSS): 1, ("routed", TSS): 1,
        ("dispatching", VBCT): 1}
    assert queued[("loading", SPINEPS)] == 0

    deliveries = {(dict(k[1])["destination"], dict(k[1])["state"]): v
                  for k, v in found.items() if k[0] == "dicomnode_deliveries_total"}
    assert deliveries == {("pacs", "delivered"): 1, ("pacs", "dead"): 1,
                          ("archive", "delivered"): 0, ("archive", "dead"): 0,
                          ("sender:MODALITY", "delivered"): 0, ("sender:MODALITY", "dead"): 1}
    assert {d: value(found, "dicomnode_deliveries_pending", destination=d)
            for d in ("pacs", "archive", "sender:MODALITY")} == {
        "pacs": 1, "archive": 1, "sender:MODALITY": 0}
    # pacs: 2 + 3 + 1 attempts, one of them succeeded
    assert {d: value(found, "dicomnode_delivery_failed_attempts_total", destination=d)
            for d in ("pacs", "archive", "sender:MODALITY")} == {
        "pacs": 5, "archive": 0, "sender:MODALITY": 1}
    assert value(found, "dicomnode_destination_reachable", destination="pacs") == 1
    assert value(found, "dicomnode_destination_reachable", destination="oldpacs") == 0
    assert value(found, "dicomnode_destination_last_check_timestamp_seconds",
                 destination="oldpacs") == _at(20).timestamp()

    # Stage durations: vertebral-bodies-ct segmented for 10 (done), 40 (failed), 699.2 (dead)
    # and 5 s (now dispatching); 10 and 5 lie on bucket bounds, which are inclusive (le).
    stage = "dicomnode_job_stage_duration_seconds"
    buckets, count, total = _histogram(found, stage, STAGE_BUCKETS, pipeline=VBCT,
                                       stage="segmenting")
    assert dict(zip([*STAGE_BUCKETS, "+Inf"], buckets, strict=True)) == {
        0.05: 0, 0.1: 0, 0.25: 0, 0.5: 0, 1.0: 0, 2.5: 0, 5.0: 1, 10.0: 2, 30.0: 2, 60.0: 3,
        120.0: 3, 300.0: 3, 600.0: 3, 1800.0: 4, 3600.0: 4, "+Inf": 4}
    assert count == 4 and total == pytest.approx(754.2)
    buckets, count, total = _histogram(found, stage, STAGE_BUCKETS, pipeline=VBCT,
                                       stage="dispatching")  # done after 0.5 s, dead 3299 s
    assert (buckets[STAGE_BUCKETS.index(0.5)], buckets[STAGE_BUCKETS.index(1800.0)],
            buckets[-2], count) == (1, 1, 2, 2)
    assert total == pytest.approx(3299.5)
    buckets, count, total = _histogram(found, stage, STAGE_BUCKETS, pipeline=VBCT,
                                       stage="complete")  # routed after 0.02, 0.5, 0.05, 0.1
    assert (buckets[0], buckets[1], buckets[3], count) == (2, 3, 4, 4)
    assert total == pytest.approx(0.67)
    # totalspineseg is still segmenting: that stage has no duration yet, loading has (3 s)
    assert _histogram(found, stage, STAGE_BUCKETS, pipeline=TSS, stage="segmenting")[1] == 0
    assert _histogram(found, stage, STAGE_BUCKETS, pipeline=TSS, stage="loading")[1:] == (1, 3)
    # a configured pipeline without jobs: empty histograms; unrouted jobs have none
    assert _histogram(found, stage, STAGE_BUCKETS, pipeline=SPINEPS, stage="encoding")[1] == 0
    assert not [k for k in found if k[0].startswith(stage) and ("pipeline", "") in k[1]]
    assert not [k for k in found if k[0].startswith(stage)
                and dict(k[1]).get("stage") in ("done", "failed", "dead", "purged", "ignored")]

    inference = "dicomnode_inference_duration_seconds"
    buckets, count, total = _histogram(found, inference, INFERENCE_BUCKETS, pipeline=VBCT)
    assert dict(zip([*INFERENCE_BUCKETS, "+Inf"], buckets, strict=True)) == {
        1.0: 0, 2.5: 0, 5.0: 1, 10.0: 2, 20.0: 2, 30.0: 2, 60.0: 3, 90.0: 3, 120.0: 3,
        180.0: 3, 300.0: 3, 600.0: 3, 1200.0: 4, 1800.0: 4, 3600.0: 4, "+Inf": 4}
    assert count == 4 and total == pytest.approx(754.2)
    assert _histogram(found, inference, INFERENCE_BUCKETS, pipeline=TSS)[1] == 0

    assert value(found, "dicomnode_storage_reserve_bytes") == 3_000_000
    free = value(found, "dicomnode_storage_free_bytes")
    assert abs(free - free_bytes(empty_index.layout.root.parent)) < 256 * 2**20
    installed = {dict(k[1])["model"]: v for k, v in found.items()
                 if k[0] == "dicomnode_model_installed"}
    assert installed == {"vertebral-bodies-ct-m": 1, "vertebral-bodies-ct-l": 0,
                         "totalspineseg": 0, "spineps-t2w": 0, "spineps-t1w": 0}
    # No runtime serves this registry: nothing is warm.
    assert {dict(k[1])["model"]: v for k, v in found.items()
            if k[0] == "dicomnode_model_warm"} == dict.fromkeys(installed, 0)
    # models.device: cpu, so no GPU families have samples
    assert not [k for k in found if k[0].startswith("dicomnode_gpu_")]


def test_an_empty_index_says_zero(empty_index: Index) -> None:
    found = samples(empty_index.registry())
    for outcome in ("stored", "duplicate", "conflict", "refused"):
        assert value(found, "dicomnode_instances_received_total", outcome=outcome) == 0
    assert value(found, "dicomnode_jobs_queued", state="routed", pipeline=VBCT) == 0
    assert value(found, "dicomnode_job_stage_duration_seconds_count", pipeline=VBCT,
                 stage="segmenting") == 0
    assert value(found, "dicomnode_deliveries_pending", destination="pacs") == 0


def test_each_scrape_reads_the_index_anew(empty_index: Index) -> None:
    """Nothing is cached: the same registry follows the index between scrapes."""
    reg = empty_index.registry()
    assert value(samples(reg), "dicomnode_instances_received_total", outcome="stored") == 0
    fill(empty_index)
    assert value(samples(reg), "dicomnode_instances_received_total", outcome="stored") == 10


def test_naming_help_and_describe(empty_index: Index) -> None:
    """Prometheus conventions: the prefix, ``_total`` on counters only, base units, a HELP
    text for each; describe() names what collect() yields, without reading the index."""
    fill(empty_index)
    scraped = families(empty_index.registry())
    for spec in SPECS:
        assert spec.name.startswith("dicomnode_") and spec.help.strip()
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert not any(unit in spec.name for unit in ("_ms", "_milliseconds", "_kb", "_mb"))
        if "bytes" in spec.name:
            assert spec.name.endswith(("_bytes", "_bytes_total")), spec.name
        family = scraped.get(spec.name.removesuffix("_total"))
        if family is not None:  # the GPU ones have no samples here
            assert family.type == spec.kind and family.documentation == spec.help
    collector = NodeCollector(empty_index.engine, empty_index.layout, empty_index.config)
    assert [f.name for f in collector.describe()] == [
        s.name.removesuffix("_total") for s in SPECS]
    assert all(not f.samples for f in collector.describe())


def test_registries_are_fresh_and_the_default_registry_untouched(empty_index: Index,
                                                                 tmp_path: Path) -> None:
    fill(empty_index)
    first, second = empty_index.registry(), empty_index.registry()
    assert first is not second

    def steady(found: dict) -> dict:  # free disk moves with whatever else writes meanwhile
        return {k: v for k, v in found.items() if not k[0].startswith("dicomnode_storage_free")}

    assert steady(samples(first)) == steady(samples(second))
    assert b"dicomnode_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
    # another index, another registry: nothing shared
    other_config = make_config(tmp_path / "other", "")
    other_layout = StorageLayout.of(other_config.storage)
    engine = make_engine(other_layout.database_url)
    create_schema(engine)
    try:
        found = samples(registry(engine, other_layout, other_config))
        assert value(found, "dicomnode_instances_received_total", outcome="stored") == 0
    finally:
        engine.dispose()
    assert value(samples(first), "dicomnode_instances_received_total", outcome="stored") == 10


def test_a_state_a_newer_version_wrote_does_not_break_a_scrape(empty_index: Index) -> None:
    fill(empty_index)
    with empty_index.engine.begin() as conn:
        conn.execute(insert(_table(Job)).values(
            series_id=1, revision=1, state="paused", instance_count=1, created_at=BASE,
            updated_at=BASE, stage_times={"complete": "not a time"}, attempts=0, priority=0,
            destinations=[], pipeline=VBCT))
    found = samples(empty_index.registry())
    assert value(found, "dicomnode_jobs_total", state="paused", pipeline=VBCT) == 1
    assert value(found, "dicomnode_job_stage_duration_seconds_count", pipeline=VBCT,
                 stage="segmenting") == 4


def test_a_scrape_costs_the_same_few_queries_however_big_the_index(tmp_path: Path) -> None:
    """GROUP BY aggregates only: the statement count does not grow with the rows (10,000
    series, 20,000 jobs with stage times, 100,000 instances here)."""
    config = make_config(tmp_path, "")
    layout = StorageLayout.of(config.storage)
    engine = make_engine(layout.database_url)
    create_schema(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _k, statement, *_a: statements.append(statement))
    try:
        reg = registry(engine, layout, config)
        samples(reg)
        small = len(statements)
        fill_large(engine, 10_000)
        statements.clear()
        started = datetime.now(UTC)
        found = samples(reg)
        elapsed = (datetime.now(UTC) - started).total_seconds()
        assert len(statements) == small
        assert value(found, "dicomnode_instances_received_total", outcome="stored") == 100_000
        assert value(found, "dicomnode_inference_duration_seconds_count", pipeline=VBCT) == 20_000
        print(f"scrape of 10,000 series / 20,000 jobs / 100,000 instances: {elapsed:.2f} s, "
              f"{len(statements)} statements")
        assert elapsed < 30  # a sanity bound for a loaded CI machine; ~0.3 s on 2 cores
    finally:
        engine.dispose()


# --- GPU memory ---------------------------------------------------------------------------------

class FakeCuda:
    """torch.cuda as two CUDA devices look through it; records what was asked."""

    def __init__(self, initialised: bool, nvml: bool):
        self.initialised, self.nvml = initialised, nvml
        self.calls: list[str] = []

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 2

    def is_initialized(self) -> bool:
        return self.initialised

    def mem_get_info(self, index: int) -> tuple[int, int]:
        self.calls.append(f"mem_get_info({index})")
        return (30 + index) * 2**30, 80 * 2**30

    def device_memory_used(self, index: int) -> int:
        self.calls.append(f"device_memory_used({index})")
        if not self.nvml:
            raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")
        return (5 + index) * 2**30

    def memory_allocated(self, index: int) -> int:
        return (index + 1) * 2**20 if self.initialised else 0

    def memory_reserved(self, index: int) -> int:
        return (index + 2) * 2**20 if self.initialised else 0


def _gpu_samples(index: Index, monkeypatch: pytest.MonkeyPatch, cuda: FakeCuda
                 ) -> dict[Any, float]:
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    index.config.models.device = "auto"
    return {k: v for k, v in samples(index.registry()).items() if k[0].startswith("dicomnode_gpu")}


def test_gpu_memory_of_a_process_that_uses_cuda(empty_index: Index,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(initialised=True, nvml=False)
    found = _gpu_samples(empty_index, monkeypatch, cuda)
    for index in (0, 1):
        device = f"cuda:{index}"
        assert value(found, "dicomnode_gpu_memory_used_bytes", device=device) == \
            (80 - 30 - index) * 2**30
        assert value(found, "dicomnode_gpu_memory_total_bytes", device=device) == 80 * 2**30
        assert value(found, "dicomnode_gpu_memory_allocated_bytes", device=device) == \
            (index + 1) * 2**20
        assert value(found, "dicomnode_gpu_memory_reserved_bytes", device=device) == \
            (index + 2) * 2**20


def test_gpu_memory_never_creates_a_cuda_context(empty_index: Index,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A process without CUDA context (a separate API process): device-wide use from NVML
    where it is installed, else nothing; cudaMemGetInfo (which would create one) is never
    called."""
    cuda = FakeCuda(initialised=False, nvml=True)
    found = _gpu_samples(empty_index, monkeypatch, cuda)
    assert value(found, "dicomnode_gpu_memory_used_bytes", device="cuda:1") == 6 * 2**30
    assert value(found, "dicomnode_gpu_memory_allocated_bytes", device="cuda:1") == 0
    assert not [k for k in found if k[0] == "dicomnode_gpu_memory_total_bytes"]
    cuda = FakeCuda(initialised=False, nvml=False)
    found = _gpu_samples(empty_index, monkeypatch, cuda)
    assert {k[0] for k in found} == {"dicomnode_gpu_memory_allocated_bytes",
                                     "dicomnode_gpu_memory_reserved_bytes"}
    assert not [c for c in cuda.calls if c.startswith("mem_get_info")]


def test_scraping_imports_torch_only_where_a_gpu_may_be(empty_index: Index) -> None:
    """In a fresh process: without a GPU driver (or with models.device: cpu) a scrape leaves
    torch unimported; where torch does get imported, CUDA is not initialised by it."""
    script = """
import sys
from pathlib import Path
from prometheus_client import generate_latest
from dicomnode.config import parse_config
from dicomnode.metrics import registry
from dicomnode.metrics.host import GPU_DRIVER_MARKERS
from dicomnode.storage import StorageLayout
from dicomnode.store import make_engine
device, root, url = sys.argv[1:]
config = parse_config({"storage": {"path": root, "database_url": url},
                       "models": {"device": device}}, Path(root) / "config.yaml")
layout = StorageLayout.of(config.storage)
text = generate_latest(registry(make_engine(layout.database_url), layout, config)).decode()
assert "dicomnode_instances_received_total" in text
gpu_driver = any(m.exists() for m in GPU_DRIVER_MARKERS)
torch = sys.modules.get("torch")
if device == "cpu" or not gpu_driver:
    assert torch is None, "torch imported"
elif torch is not None:
    assert not torch.cuda.is_initialized(), "CUDA initialised"
print("ok", gpu_driver)
"""
    for device in ("cpu", "auto"):
        result = subprocess.run([sys.executable, "-c", script, device,
                                 str(empty_index.layout.root),
                                 empty_index.config.storage.database_url], capture_output=True,
                                text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
                                env={**os.environ, "PYTHONPATH": "."})
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ok"), result.stdout
