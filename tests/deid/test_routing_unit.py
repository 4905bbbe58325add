"""The router's forwards and the dispatcher's refusal to send without the site key, on a real
index (SQLite) and spool, without any network peer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicomnode.config import ConfigError, parse_config
from dicomnode.dispatcher import Dispatcher
from dicomnode.rules.router import Router
from dicomnode.storage import ResultsStore, Spool, StorageLayout
from dicomnode.store import (
    Delivery,
    Instance,
    Job,
    JobState,
    Series,
    Study,
    create_schema,
    make_engine,
    session_factory,
    utcnow,
)
from tests.synthetic import axial_ct

RESEARCH = {"type": "dicom", "ae_title": "RESEARCH", "host": "127.0.0.1", "port": 9,
            "deidentify": "basic"}


def _node(tmp_path: Path, rule: dict[str, Any]) -> tuple[Any, Any, Router, Dispatcher, int]:
    config = parse_config({"storage": {"path": str(tmp_path / "var")},
                           "destinations": {"research": RESEARCH},
                           "deidentification": {"key_env": "DICOMNODE_UNSET_TEST_KEY"},
                           "routing": {"rules": [rule]}})
    layout = StorageLayout.of(config.storage)
    engine = make_engine(layout.database_url)
    create_schema(engine)
    sessions = session_factory(engine)
    spool = Spool(layout.spool)
    now = utcnow()
    with sessions.begin() as session:
        study = Study(study_instance_uid="1.2.3", first_received_at=now)
        series = Series(series_instance_uid="1.2.3.4", study=study, modality="CT",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", instance_count=8,
                        first_received_at=now, last_received_at=now)
        session.add_all([study, series])
        session.flush()
        for k, ds in enumerate(axial_ct().datasets):
            ds = copy.deepcopy(ds)
            path = layout.spool / f"{k}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            session.add(Instance(sop_instance_uid=str(ds.SOPInstanceUID), series_id=series.id,
                                 sop_class_uid=str(ds.SOPClassUID), path=path.name,
                                 transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                                 size=path.stat().st_size, received_at=now))
        job = Job.for_series(series)
        session.add(job)
        session.flush()
        job_id = job.id
    dispatcher = Dispatcher(config, sessions, ResultsStore(layout))
    return sessions, engine, Router(config.routing, sessions, spool), dispatcher, job_id


def test_a_forward_only_rule_never_sends_without_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOMNODE_UNSET_TEST_KEY", raising=False)
    sessions, engine, router, dispatcher, job_id = _node(
        tmp_path, {"name": "fwd", "match": {"modality": ["CT"]}, "forward": ["research"]})
    with pytest.raises(ConfigError, match="deidentification.key_env: environment variable"):
        dispatcher.prepare()  # serve stops at start; a node running on anyway sends nothing
    assert router.route_pending() == []  # nothing for a worker to run
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == JobState.DISPATCHING and job.rule == "fwd"
    assert dispatcher.dispatch_due() == 1
    with sessions() as session:
        (delivery,) = session.scalars(select(Delivery)).all()
        assert (delivery.destination, delivery.state.value, delivery.error_kind) == (
            "forward:research", "dead", "deid-key")
        assert "DICOMNODE_UNSET_TEST_KEY" in (delivery.error_message or "")
        assert session.get(Job, job_id).state == JobState.DEAD  # type: ignore[union-attr]
    # the key is back: the forward is among the destination's dead letters, sent again
    monkeypatch.setenv("DICOMNODE_UNSET_TEST_KEY", "now-set")
    with sessions.begin() as session:
        assert dispatcher.requeue_dead(session, "research") == [job_id]
    with sessions() as session:
        assert session.get(Job, job_id).state == JobState.DISPATCHING  # type: ignore[union-attr]
        assert session.scalars(select(Delivery.state)).all() == ["pending"]
    engine.dispose()


def test_forward_when_done_waits_for_the_results(tmp_path: Path) -> None:
    sessions, engine, router, dispatcher, job_id = _node(
        tmp_path, {"name": "ct", "match": {"modality": ["CT"]},
                   "pipelines": ["vertebral-bodies-ct"], "forward": ["research"],
                   "forward_when": "done"})
    assert router.route_pending() == [job_id]
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == JobState.ROUTED
        assert job.destinations == ["forward:research"]
        assert session.scalars(select(Delivery)).all() == []
        assert dispatcher.targets(job) == ["forward:research"]
    engine.dispose()
