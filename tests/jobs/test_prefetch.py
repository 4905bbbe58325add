"""Loading a series ahead of its job (an idle worker, once the series has been quiet for half
its timeout): the job gets that volume only if its files are exactly those loaded; a late
instance, or a file replaced by a re-send, means a fresh load."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.config import ModelsConfig, ResultsConfig
from dicomnode.run.case import Case, CaseRunner
from dicomnode.store import Instance, Job, SeriesState, utcnow
from tests.jobs.test_job_service import World


class Seen(Exception):
    """Stops the run once the pipeline has been handed its volume."""


class RecordingPipeline:
    def __init__(self) -> None:
        self.volumes: list[Any] = []

    def run(self, volume: Any) -> Any:
        self.volumes.append(volume)
        raise Seen


def _receiving(world: World, job_id: int, quiet_for: float) -> None:
    """The job's series back to receiving, its last instance ``quiet_for`` seconds ago."""
    with world.sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.series.state = SeriesState.RECEIVING
        job.series.last_received_at = utcnow() - timedelta(seconds=quiet_for)


def _late_instance(world: World, job_id: int) -> None:
    """One more slice in the job's series: its last one under a new UID, one slice further."""
    with world.sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        instances = session.query(Instance).filter(Instance.series_id == job.series_id).all()
        slices = sorted((pydicom.dcmread(world.spool / i.path) for i in instances),
                        key=lambda ds: float(ds.ImagePositionPatient[2]))
        first = instances[0]
        late = slices[-1]
        step = float(slices[-1].ImagePositionPatient[2]) - float(slices[-2].ImagePositionPatient[2])
        late.ImagePositionPatient[2] = float(late.ImagePositionPatient[2]) + step
        uid = generate_uid()
        late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = uid
        relative = str(Path(first.path).with_name(f"{uid}.dcm"))
        late.save_as(world.spool / relative, enforce_file_format=True)
        session.add(Instance(sop_instance_uid=uid, series_id=job.series_id,
                             sop_class_uid=first.sop_class_uid, path=relative, size=1,
                             transfer_syntax_uid=first.transfer_syntax_uid,
                             received_at=utcnow()))


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path, SimpleNamespace(dicom_port=1), "")  # type: ignore[arg-type]
    world.processor = CaseRunner(ModelsConfig(), ResultsConfig())  # type: ignore[assignment]
    world.stages = world.build_stages()
    return world


def _run_case(runner: CaseRunner, case: Case, out: Path) -> Any:
    """The volume ``runner.run`` hands the pipeline for ``case``."""
    pipeline = RecordingPipeline()
    with pytest.raises(Seen):
        runner.run(case, pipeline, out)  # type: ignore[arg-type]
    return pipeline.volumes[0]


def test_a_quiet_series_is_loaded_once_and_its_job_gets_that_volume(world: World,
                                                                    tmp_path: Path) -> None:
    job_id = world.add_series(slices=4)
    world.stages.router.route_pending()
    runner: CaseRunner = world.processor  # type: ignore[assignment]
    worker = world.stages.worker
    _receiving(world, job_id, quiet_for=0.5)
    assert not worker.prefetch_quiet(5.0)  # not quiet long enough yet
    _receiving(world, job_id, quiet_for=10)
    assert worker.prefetch_quiet(5.0)
    assert not worker.prefetch_quiet(5.0)  # loaded already: not again
    _, case = worker.case_of(job_id)
    cached = runner.volumes.take(case)
    assert cached is not None and len(cached.datasets) == 4
    runner.volumes.put(_key(case), cached)  # back, for the run below
    assert _run_case(runner, case, tmp_path / "out") is cached
    # handed over once: the next run of the same case reads the files
    assert _run_case(runner, case, tmp_path / "out2") is not cached


def test_a_late_instance_or_a_replaced_file_means_a_fresh_load(world: World,
                                                              tmp_path: Path) -> None:
    job_id = world.add_series(slices=4)
    world.stages.router.route_pending()
    runner: CaseRunner = world.processor  # type: ignore[assignment]
    worker = world.stages.worker
    _receiving(world, job_id, quiet_for=10)
    assert worker.prefetch_quiet(5.0)
    _late_instance(world, job_id)
    _, case = worker.case_of(job_id)
    volume = _run_case(runner, case, tmp_path / "out")
    assert len(volume.datasets) == 5  # every file, the late one included
    assert not runner.volumes.has(_key(case))  # the stale volume was dropped

    assert worker.prefetch_quiet(5.0)  # the series as it is now
    _, case = worker.case_of(job_id)
    # a re-sent instance replaces its spool file by a rename: same path, new file
    target = case.paths[0]
    replacement = target.with_suffix(".new")
    shutil.copy(target, replacement)
    os.replace(replacement, target)
    fresh = _run_case(runner, case, tmp_path / "out2")
    assert len(fresh.datasets) == 5 and not runner.volumes.has(_key(case))


def test_a_series_that_does_not_load_is_not_tried_again_until_it_changes(
        world: World, tmp_path: Path) -> None:
    job_id = world.add_series(slices=1)  # one slice: not a volume
    world.stages.router.route_pending()
    worker = world.stages.worker
    _receiving(world, job_id, quiet_for=10)
    assert not worker.prefetch_quiet(5.0)
    runner: CaseRunner = world.processor  # type: ignore[assignment]
    _, case = worker.case_of(job_id)
    assert runner.volumes.has(_key(case))  # tried; not tried again at the next poll
    assert runner.volumes.take(case) is None


def _key(case: Case) -> tuple[object, ...]:
    from dicomnode.run.case import fingerprint

    key = fingerprint(case)
    assert key is not None
    return key


def test_a_job_waits_for_the_load_ahead_of_its_series_and_only_one_thread_loads_it(
        world: World) -> None:
    """Both executor threads idle: one loads the series ahead, the other does not load it
    too; the job claimed meanwhile gets that volume once loaded, not a second read."""
    import threading
    import time

    job_id = world.add_series(slices=4)
    world.stages.router.route_pending()
    runner: CaseRunner = world.processor  # type: ignore[assignment]
    _, case = world.stages.worker.case_of(job_id)
    key = _key(case)
    assert runner.volumes.begin(key)  # a load ahead has begun
    assert not runner.prefetch(case) and not runner.volumes.begin(key)  # no second one
    loaded = object()
    threading.Timer(0.3, runner.volumes.put, (key, loaded)).start()
    started = time.monotonic()
    assert runner.volumes.take(case) is loaded
    assert time.monotonic() - started >= 0.25
    assert not runner.volumes.has(key)  # handed over
