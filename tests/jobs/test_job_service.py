"""The job state machine against a real index database and a real Orthanc.

The pipeline run is replaced here by a processor that writes a real DICOM object (a copy of the
first source slice under a derived UID): these tests are about routing, queueing, retries and
purging. The end-to-end tests run the real nnU-Net path.
"""

from __future__ import annotations

import itertools
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy.orm import sessionmaker

from converters.volume import (
    NotAVolumeSopClassError,
    UnsupportedMosaicError,
    UnsupportedTransferSyntaxError,
    VolumeError,
)
from dicomnode.assembler import Assembler
from dicomnode.config import Config, parse_config
from dicomnode.dispatcher import backoff
from dicomnode.jobs.stages import Stages
from dicomnode.run.case import Case, CaseStep, CaseSummary, OnStep
from dicomnode.storage import Spool, StorageLayout
from dicomnode.store import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobError,
    JobState,
    Series,
    SeriesState,
    Study,
    create_schema,
    error_kind,
    make_engine,
    utcnow,
)
from tests.orthanc import ORTHANC, Orthanc, free_port
from tests.shared_data import EXAMPLE_CT_DICOM

CT_DIR = EXAMPLE_CT_DICOM


def _config(tmp_path: Path, port: int, **sections: Any) -> Config:
    data = {
        "storage": {"path": str(tmp_path / "var"), "min_free": 0},
        "routing": {"rules": [
            {"name": "ct", "match": {"modality": ["CT"], "image_type_excludes": ["LOCALIZER"]},
             "pipelines": ["vertebral-bodies-ct"], "destinations": ["pacs"], "priority": 1},
            {"name": "mr", "match": {"modality": ["MR"]}, "pipelines": ["totalspineseg"],
             "destinations": ["pacs"]},
        ]},
        "destinations": {"pacs": {"type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                  "port": port}},
        "dispatch": {"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.02,
                     "echo_interval": 0},
        **sections,
    }
    return parse_config(data, tmp_path / "config.yaml")


class CopyRunner:
    """Stands in for the case runner: writes one derived object per job; can be told to fail."""

    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.calls: list[str] = []

    def run_pipeline(self, pipeline: str, case: Case, out: Path, on_step: OnStep) -> CaseSummary:
        self.calls.append(pipeline)
        on_step(CaseStep.SEGMENTING)
        if self.fail is not None:
            raise self.fail
        on_step(CaseStep.ENCODING)
        paths = case.paths
        ds = pydicom.dcmread(paths[0])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(paths[0]), "series"])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(paths[0]), pipeline])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / "00_result.dcm")
        return CaseSummary({}, "copy", ("T12",), (out / "00_result.dcm",))


class World:
    """A database with series in it, a spool, a job service, and an Orthanc."""

    def __init__(self, tmp_path: Path, orthanc: Orthanc, database_url: str, **sections: Any):
        self.orthanc = orthanc
        self.config = _config(tmp_path, orthanc.dicom_port, **sections)
        self.config.storage.database_url = database_url  # "" = SQLite under storage.path
        self.layout = StorageLayout.of(self.config.storage)
        engine = make_engine(self.layout.database_url, immediate=True)
        create_schema(engine)
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.spool = self.layout.spool
        self.processor = CopyRunner()
        self.stages = self.build_stages()

    def build_stages(self) -> Stages:
        """The stages over this world's database and storage (again: a restarted node)."""
        return Stages.build(self.config, self.sessions, Spool(self.spool), self.processor)

    def add_series(self, modality: str = "CT", image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
                   is_image: bool = True, slices: int = 3, sop_class_uid: str | None = None
                   ) -> int:
        """Spool ``slices`` real CT slices under new UIDs (the 20 sample files reused when more
        are asked for); return the complete job's id. ``sop_class_uid``: the series' and its
        instances' SOP class (default: the index leaves it unset, files keep CT Image)."""
        study_uid, series_uid = generate_uid(), generate_uid()
        now = utcnow()
        with self.sessions.begin() as session:
            study = Study(study_instance_uid=study_uid, first_received_at=now)
            series = Series(series_instance_uid=series_uid, study=study, modality=modality,
                            is_image=is_image, state=SeriesState.COMPLETE, first_received_at=now,
                            last_received_at=now, instance_count=slices,
                            sop_class_uid=sop_class_uid)
            session.add_all([study, series])
            session.flush()
            for path in itertools.islice(itertools.cycle(sorted(CT_DIR.iterdir())), slices):
                ds = pydicom.dcmread(path)
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                if sop_class_uid is not None:
                    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.Modality, ds.ImageType = modality, image_type
                relative = f"{study_uid}/{series_uid}/{ds.SOPInstanceUID}.dcm"
                (self.spool / relative).parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(self.spool / relative)
                session.add(Instance(sop_instance_uid=ds.SOPInstanceUID, series_id=series.id,
                                     sop_class_uid=ds.SOPClassUID, path=relative, size=1,
                                     transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                                     received_at=now))
            job = Job.for_series(series)
            session.add(job)
            session.flush()
            return job.id

    def job(self, job_id: int) -> Job:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def deliveries(self, job_id: int) -> list[Delivery]:
        with self.sessions() as session:
            return list(session.query(Delivery).filter(Delivery.job_id == job_id))

    def run_all(self) -> None:
        self.stages.router.route_pending()
        while (job_id := self.stages.worker.claim_next()) is not None:
            self.stages.worker.run_job(job_id)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    if ORTHANC is None:
        pytest.skip("Orthanc (Debian 'orthanc') not installed")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


def test_backoff_doubles_and_caps() -> None:
    assert [backoff(n, 10, 60) for n in range(1, 6)] == [10, 20, 40, 60, 60]


def test_series_is_routed_run_and_delivered(tmp_path: Path, orthanc: Orthanc,
        database_url: str) -> None:
    world = World(tmp_path, orthanc, database_url)
    job_id = world.add_series()
    world.run_all()
    job = world.job(job_id)
    assert (job.state, job.pipeline, job.rule, job.destinations) == (
        JobState.DISPATCHING, "vertebral-bodies-ct", "ct", ["pacs"])
    assert world.stages.dispatcher.dispatch_due() == 1
    job = world.job(job_id)
    assert job.state == JobState.DONE
    for stage in ("complete", "routed", "loading", "segmenting", "encoding", "dispatching", "done"):
        assert stage in job.stage_times, stage
    (delivery,) = world.deliveries(job_id)
    assert delivery.state == DeliveryState.DELIVERED and delivery.attempts == 1
    assert set(delivery.stored) <= set(orthanc.sop_instance_uids())


def test_results_are_flushed_to_disk_before_the_job_moves_to_dispatch(
        tmp_path: Path, orthanc: Orthanc, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With storage.fsync on, every result file and the renamed results folder are fsynced
    while the job is still encoding: a power loss never leaves a dispatching job without
    its files."""
    import os

    import dicomnode.storage.durable as durable

    world = World(tmp_path, orthanc, database_url)
    job_id = world.add_series()
    flushed: list[tuple[str, JobState]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushed.append((os.readlink(f"/proc/self/fd/{fd}"), world.job(job_id).state))
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", recording_fsync)
    world.run_all()
    assert world.job(job_id).state == JobState.DISPATCHING
    results = world.layout.results(job_id)
    partial = f"{results}.partial"
    assert (f"{partial}/00_result.dcm", JobState.ENCODING) in flushed
    assert (partial, JobState.ENCODING) in flushed
    assert (str(results.parent), JobState.ENCODING) in flushed  # the rename

    flushed.clear()
    world.config.storage.fsync = False
    world.stages = world.build_stages()  # the setting is read when the node starts
    second = world.add_series()
    world.run_all()
    assert world.job(second).state == JobState.DISPATCHING and flushed == []


def test_non_image_and_unmatched_series_are_ignored_with_a_reason(tmp_path: Path,
                                                                   orthanc: Orthanc,
        database_url: str) -> None:
    world = World(tmp_path, orthanc, database_url)
    sr = world.add_series(is_image=False)
    scout = world.add_series(image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    world.run_all()
    assert (world.job(sr).state, world.job(sr).error_kind) == (JobState.IGNORED, "not-an-image")
    assert (world.job(scout).state, world.job(scout).error_kind) == (JobState.IGNORED,
                                                                     "no-rule-matches")
    assert world.processor.calls == []


@pytest.mark.parametrize("sop_class_uid", [
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture: an "Exam Summary" page
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
])
def test_image_series_of_a_non_volume_sop_class_is_ignored_whatever_its_size(
        tmp_path: Path, orthanc: Orthanc, database_url: str, sop_class_uid: str) -> None:
    """An image series (is_image) with 40 slices that the CT rule would take is still no
    volume: it is ignored by SOP class before any rule is tried."""
    world = World(tmp_path, orthanc, database_url)
    summary = world.add_series(slices=40, sop_class_uid=sop_class_uid)
    ct = world.add_series(sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    world.run_all()
    job = world.job(summary)
    assert (job.state, job.error_kind) == (JobState.IGNORED, "not-a-volume-sop-class")
    assert sop_class_uid in (job.error_message or "")
    assert "Secondary Capture" in (job.error_message or "")
    assert world.job(ct).state in (JobState.DISPATCHING, JobState.DONE)
    assert world.processor.calls == ["vertebral-bodies-ct"]


def test_ct_series_that_starts_with_a_secondary_capture_is_still_routed(
        tmp_path: Path, orthanc: Orthanc, database_url: str) -> None:
    """The series row holds the first instance's SOP class; one SC page first must not hide
    the CT images after it (the loader sets the page aside)."""
    world = World(tmp_path, orthanc, database_url)
    job_id = world.add_series(slices=5, sop_class_uid="1.2.840.10008.5.1.4.1.1.7")
    with world.sessions.begin() as session:
        series_id = session.get(Job, job_id).series_id
        instances = session.query(Instance).filter(Instance.series_id == series_id)
        for instance in instances.order_by(Instance.id).offset(1):
            instance.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"
    world.stages.router.route_pending()
    assert world.job(job_id).state == JobState.ROUTED


@pytest.mark.parametrize("error", [
    NotAVolumeSopClassError("m", [], ("1.2.840.10008.5.1.4.1.1.7",)),
    UnsupportedMosaicError("m", [], 35),
    UnsupportedTransferSyntaxError("m", "1.2.840.10008.1.2.4.110"),
], ids=lambda e: type(e).__name__)
def test_volume_error_kinds_match_the_kinds_jobs_record(error: VolumeError) -> None:
    """A loader error that reaches run_job is recorded under its class name; the loader's own
    ``kind`` must say the same."""
    assert error_kind(error) == error.kind


def test_all_match_mode_makes_one_job_per_pipeline(tmp_path: Path, orthanc: Orthanc,
        database_url: str) -> None:
    world = World(tmp_path, orthanc, database_url)
    world.config.routing.mode = "all"
    world.config.routing.rules[1].match.modality = ["CT"]
    job_id = world.add_series()
    routed = world.stages.router.route_job(job_id)
    assert len(routed) == 2
    assert sorted(world.job(j).pipeline for j in routed) == ["totalspineseg",
                                                             "vertebral-bodies-ct"]


def test_priority_orders_the_queue(tmp_path: Path, orthanc: Orthanc,
        database_url: str) -> None:
    world = World(tmp_path, orthanc, database_url)
    mr = world.add_series(modality="MR")
    ct = world.add_series(modality="CT")
    world.stages.router.route_pending()
    assert world.stages.worker.claim_next() == ct  # rule "ct" has priority 1, "mr" 0
    assert world.stages.worker.claim_next() == mr
    assert world.stages.worker.claim_next() is None


def test_failing_series_fails_with_its_reason_and_the_next_still_runs(tmp_path: Path,
                                                                      orthanc: Orthanc,
        database_url: str) -> None:
    class SliceMissingError(ValueError):
        pass

    world = World(tmp_path, orthanc, database_url)
    bad = world.add_series()
    world.processor.fail = SliceMissingError("slice missing between positions 42.0 and 48.0 mm")
    world.run_all()
    job = world.job(bad)
    assert (job.state, job.error_kind) == (JobState.FAILED, "slice-missing")
    assert "42.0 and 48.0" in (job.error_message or "")
    assert not world.layout.results(bad).exists()
    world.processor.fail = None
    good = world.add_series()
    world.run_all()
    assert world.job(good).state == JobState.DISPATCHING


def test_destination_down_is_retried_then_dead_then_requeued_by_hand(tmp_path: Path,
                                                                     orthanc: Orthanc,
        database_url: str) -> None:
    world = World(tmp_path, orthanc, database_url)
    world.config.destinations["pacs"].port = free_port()  # nobody listens there
    job_id = world.add_series()
    world.run_all()
    world.stages.dispatcher.dispatch_due()
    (delivery,) = world.deliveries(job_id)
    assert (delivery.state, delivery.attempts, delivery.error_kind) == (
        DeliveryState.PENDING, 1, "unreachable")
    assert world.job(job_id).state == JobState.DISPATCHING
    for _ in range(2):
        world.stages.dispatcher.dispatch_due(now=utcnow() + timedelta(seconds=5))
    (delivery,) = world.deliveries(job_id)
    assert (delivery.state, delivery.attempts) == (DeliveryState.DEAD, 3)
    job = world.job(job_id)
    assert (job.state, job.error_kind) == (JobState.DEAD, "unreachable")
    world.config.destinations["pacs"].port = orthanc.dicom_port  # the PACS is back
    assert world.stages.control.retry(job_id) == "dispatching"
    world.stages.dispatcher.dispatch_due()
    assert world.job(job_id).state == JobState.DONE
    assert world.processor.calls == ["vertebral-bodies-ct"]  # results re-sent, not recomputed


def test_restart_requeues_jobs_a_worker_held(tmp_path: Path, orthanc: Orthanc,
        database_url: str) -> None:
    world = World(tmp_path, orthanc, database_url)
    job_id = world.add_series()
    world.stages.router.route_pending()
    assert world.stages.worker.claim_next() == job_id
    partial = world.layout.results(job_id).with_name(f"{job_id:08d}.partial")
    partial.mkdir(parents=True)
    # the process dies here; a new service over the same database recovers
    again = world.build_stages()
    assert again.control.recover() == 1
    assert world.job(job_id).state == JobState.ROUTED and not partial.exists()
    world.run_all()
    assert world.job(job_id).state == JobState.DISPATCHING


def test_late_instance_supersedes_a_queued_job_but_not_a_running_one(tmp_path: Path,
                                                                     orthanc: Orthanc,
        database_url: str) -> None:
    """Two series completed early (their senders paused past the timeout), then each grew by
    an instance. The queued job would segment a partial series, so the new revision replaces
    it; the job a worker already holds runs to the end."""
    world = World(tmp_path, orthanc, database_url)
    running, queued = world.add_series(), world.add_series()
    world.stages.router.route_pending()
    assert world.stages.worker.claim_next() == running  # same priority: oldest first
    with world.sessions.begin() as session:
        for job_id in (running, queued):
            series = session.get(Job, job_id).series
            series.revision, series.instance_count = 2, 4
            Assembler._complete(session, series, utcnow())
    assert world.job(running).state == JobState.LOADING
    assert world.job(queued).state == JobState.SUPERSEDED
    world.stages.router.route_pending()
    claimed = {world.stages.worker.claim_next(), world.stages.worker.claim_next()}
    assert world.stages.worker.claim_next() is None
    assert {(world.job(j).revision, world.job(j).instance_count) for j in claimed} == {(2, 4)}
    assert {world.job(j).series_id for j in claimed} == {world.job(running).series_id,
                                                        world.job(queued).series_id}


def test_restart_supersedes_a_held_job_whose_series_grew(tmp_path: Path, orthanc: Orthanc,
        database_url: str) -> None:
    """Killed while segmenting revision 1; a late instance had opened revision 2 (which gets
    its own job): at restart revision 1 is superseded, not run again."""
    world = World(tmp_path, orthanc, database_url)
    job_id = world.add_series()
    world.stages.router.route_pending()
    assert world.stages.worker.claim_next() == job_id
    with world.sessions.begin() as session:
        session.get(Job, job_id).series.revision = 2
    again = world.build_stages()
    assert again.control.recover() == 0
    assert world.job(job_id).state == JobState.SUPERSEDED
    assert again.worker.claim_next() is None


def test_cancel_and_retry_rules(tmp_path: Path, orthanc: Orthanc,
        database_url: str) -> None:
    world = World(tmp_path, orthanc, database_url)
    job_id = world.add_series()
    world.stages.router.route_pending()
    world.stages.control.cancel(job_id)
    assert world.stages.worker.claim_next() is None
    with pytest.raises(JobError, match="already cancelled"):
        world.stages.control.cancel(job_id)
    assert world.stages.control.retry(job_id) == "routed"
    with pytest.raises(JobError, match="only failed, dead, cancelled"):
        world.stages.control.retry(job_id)
    with pytest.raises(JobError, match="no job 999"):
        world.stages.control.retry(999)


def test_retention_never_purges_undelivered_results(tmp_path: Path, orthanc: Orthanc,
        database_url: str) -> None:
    world = World(tmp_path, orthanc, database_url, retention={"keep_done_hours": 1})
    delivered, waiting = world.add_series(), world.add_series()
    world.run_all()
    world.config.destinations["pacs"].port = free_port()
    world.stages.dispatcher.dispatch_due()  # both fail once
    world.config.destinations["pacs"].port = orthanc.dicom_port
    with world.sessions.begin() as session:  # only the first gets delivered
        delivery = session.query(Delivery).filter(Delivery.job_id == waiting).one()
        delivery.next_attempt_at = utcnow() + timedelta(days=1)
    world.stages.dispatcher.dispatch_due(now=utcnow() + timedelta(seconds=1))
    assert world.job(delivered).state == JobState.DONE
    assert world.job(waiting).state == JobState.DISPATCHING
    assert world.stages.retention.purge() == []  # nothing is old enough yet
    later = utcnow() + timedelta(hours=2)
    assert world.stages.retention.purge(now=later) == [delivered]
    assert not world.layout.results(delivered).exists()
    assert world.layout.results(waiting).exists()
    with world.sessions() as session:
        spooled = session.query(Instance).join(Job, Job.series_id == Instance.series_id)
        assert {j.id for j in session.query(Job)} == {delivered, waiting}
        assert spooled.filter(Job.id == delivered).count() == 0
        assert spooled.filter(Job.id == waiting).count() == 3
    assert world.stages.retention.purge(now=later) == []  # purged once only


def test_emergency_purge_takes_the_oldest_delivered_job_first(tmp_path: Path,
                                                              orthanc: Orthanc,
        database_url: str) -> None:
    world = World(tmp_path, orthanc, database_url, retention={"keep_done_hours": 0})
    world.config.storage.min_free = 10**9
    world.stages = world.build_stages()  # the setting is read when the node starts
    first, second = world.add_series(), world.add_series()
    world.run_all()
    world.stages.dispatcher.dispatch_due()
    assert world.stages.retention.purge() == []  # keep_done_hours 0: never, unless disk is short
    assert world.stages.retention.purge(free_bytes=10**6) == [first]
    assert world.stages.retention.purge(free_bytes=10**6) == [second]
    shutil.rmtree(tmp_path / "var", ignore_errors=True)


def test_a_wake_up_starts_a_new_job_without_waiting_for_the_poll(
        tmp_path: Path, orthanc: Orthanc) -> None:
    """With a 30 s poll the executor still routes, runs and delivers a new job at once once
    woken (the node wakes it when the assembler creates a job); without the wake-up it would
    sit for up to poll_interval."""
    import time

    from dicomnode.jobs.executor import Executor

    world = World(tmp_path, orthanc, "", jobs={"poll_interval": 30, "workers": 1})
    executor = Executor(world.config, world.stages)
    executor.start()
    try:
        time.sleep(0.5)  # every thread is asleep in its first wait now
        job_id = world.add_series()
        started = time.monotonic()
        executor.wake()
        while world.job(job_id).state != JobState.DONE:
            assert time.monotonic() - started < 10, world.job(job_id).state
            time.sleep(0.05)
    finally:
        executor.stop()


def test_the_assembler_wakes_the_executor_when_it_creates_a_job(tmp_path: Path,
                                                                orthanc: Orthanc) -> None:
    world = World(tmp_path, orthanc, "")
    engine = world.sessions.kw["bind"]
    woken: list[bool] = []
    assembler = Assembler(engine, engine, 0.01, on_job=lambda: woken.append(True))
    with world.sessions.begin() as session:
        study = Study(study_instance_uid=generate_uid(), first_received_at=utcnow())
        series = Series(series_instance_uid=generate_uid(), study=study, modality="CT",
                        is_image=True, state=SeriesState.RECEIVING, instance_count=1,
                        first_received_at=utcnow() - timedelta(seconds=5),
                        last_received_at=utcnow() - timedelta(seconds=5))
        session.add_all([study, series])
        session.flush()
        series_id = series.id
    job = assembler.complete_if_quiet(series_id)
    assert job is not None and job.state == JobState.COMPLETE and woken == [True]
