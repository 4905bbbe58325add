"""The route stage: a complete series' job gets its pipeline(s) and destinations, or a reason
why it is not segmented; and the deliveries of the source series that its rules forward.

Decides with the same functions ``dicomnode rules test`` and ``dicomnode process`` use: the
series kind from :func:`dicomnode.grouping.series_kind`, the facts from one header plus the
frame count of the series, the rules from :func:`dicomnode.rules.route`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import RoutingConfig, RuleConfig
from dicomnode.forward import forward_delivery
from dicomnode.grouping import SeriesKind, series_kind
from dicomnode.logs import log_event
from dicomnode.rules.engine import RoutingDecision, route
from dicomnode.rules.facts import SeriesFacts
from dicomnode.storage import Spool
from dicomnode.store import (
    Association,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobError,
    JobState,
    Series,
    utcnow,
)

LOGGER = logging.getLogger("dicomnode.jobs")


def _describe(uid: str) -> str:
    """``Name (uid)`` of a UID pydicom knows, else the bare UID."""
    name = pydicom.uid.UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def first_instance(session: Session, series_id: int) -> tuple[Instance, str]:
    """The series' first instance and the calling AE title that sent it (from the association
    audit; empty when the audit has none)."""
    first = session.scalars(select(Instance).where(Instance.series_id == series_id)
                            .order_by(Instance.id).limit(1)).first()
    if first is None:
        raise JobError("no-instances", "the series has no instances in the index")
    association = (session.get(Association, first.association_id)
                   if first.association_id is not None else None)
    return first, association.calling_ae_title if association else ""


def series_facts(session: Session, series_id: int, spool_root: Path) -> tuple[SeriesFacts, str]:
    """The facts rules match on for a held series, and the sender's AE title (else the spool
    file's Source Application Entity Title): what the router decides with."""
    first, calling = first_instance(session, series_id)
    header = pydicom.dcmread(spool_root / first.path, stop_before_pixels=True)
    if not calling:
        calling = str(header.file_meta.get("SourceApplicationEntityTitle", "") or "").strip()
    frames = session.scalar(select(func.sum(func.coalesce(Instance.frames, 1)))
                            .where(Instance.series_id == series_id)) or 0
    return (SeriesFacts.from_dataset(header, slices=int(frames), calling_ae_title=calling),
            calling)


class Router:
    """Routes jobs in state ``complete``."""

    def __init__(self, routing: RoutingConfig, sessions: sessionmaker[Session], spool: Spool):
        self.routing = routing
        self.sessions = sessions
        self.spool = spool

    def route_pending(self) -> list[int]:
        """Route every job the assembler handed over; returns the ids of the jobs routed."""
        with self.sessions() as session:
            ids = session.scalars(select(Job.id).where(Job.state == JobState.COMPLETE)
                                  .order_by(Job.id)).all()
        routed: list[int] = []
        for job_id in ids:
            routed += self.route_job(job_id)
        return routed

    def facts(self, session: Session, job: Job) -> tuple[SeriesFacts, str]:
        """The facts rules match on, and the sender's AE title."""
        return series_facts(session, job.series_id, self.spool.root)

    def route_job(self, job_id: int) -> list[int]:
        """Apply the rules; one job per selected pipeline (the first reuses this row)."""
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None or job.state != JobState.COMPLETE:
                return []
            series = session.get(Series, job.series_id)
            assert series is not None
            classes = set(session.scalars(select(Instance.sop_class_uid)
                                          .where(Instance.series_id == job.series_id)))
            kind = series_kind(series.is_image, classes | {series.sop_class_uid})
            if kind is not SeriesKind.VOLUME and self._forward_only(session, job):
                return []  # nothing to run: the dispatcher takes it from here
            if kind is SeriesKind.NOT_AN_IMAGE:
                job.transition(JobState.IGNORED, error_kind=kind.value,
                               error_message="non-image objects (SR, PR, KO…) are kept, not "
                                             "segmented")
                return []
            if kind is SeriesKind.NOT_A_VOLUME:
                named = ", ".join(_describe(uid) for uid in sorted(u for u in classes if u))
                job.transition(JobState.IGNORED, error_kind=kind.value,
                               error_message=f"SOP class {named} is not a CT/MR/PET image class "
                                             "that forms a volume: kept, not segmented")
                return []
            try:
                facts, sender = self.facts(session, job)
            except (JobError, OSError, pydicom.errors.InvalidDicomError) as exc:
                kind_word = exc.kind if isinstance(exc, JobError) else "unreadable"
                job.transition(JobState.FAILED, error_kind=kind_word, error_message=str(exc))
                return []
            decision = route(self.routing, facts)
            pairs = decision.pipelines
            if not pairs and self._forward(session, job, decision, sender, pipelines=False):
                return []
            if not pairs:
                job.transition(JobState.IGNORED, error_kind="no-rule-matches",
                               error_message=f"{facts.modality} {facts.orientation} series with "
                                             f"{facts.slices} slices matches no routing rule")
                return []
            jobs = [job]
            for _ in pairs[1:]:
                extra = Job.for_series(series)
                extra.created_at, extra.stage_times = job.created_at, dict(job.stage_times or {})
                extra.revision, extra.instance_count = job.revision, job.instance_count
                session.add(extra)
                jobs.append(extra)
            for target, (pipeline, rule) in zip(jobs, pairs, strict=True):
                target.pipeline, target.rule, target.priority = pipeline, rule.name, rule.priority
                target.destinations = list(rule.destinations)
                target.sender = sender or None
                target.transition(JobState.ROUTED)
            self._forward(session, job, decision, sender, pipelines=True)
            session.flush()
            routed = [j.id for j in jobs]
        for routed_id, (pipeline, rule) in zip(routed, pairs, strict=True):
            log_event(LOGGER, "job.routed", job=routed_id, pipeline=pipeline, rule=rule.name)
        return routed

    def _forward_only(self, session: Session, job: Job) -> bool:
        """A series that never becomes a volume is still forwarded when a rule says so."""
        if not any(rule.forward for rule in self.routing.rules):
            return False
        try:
            facts, sender = self.facts(session, job)
        except (JobError, OSError, pydicom.errors.InvalidDicomError):
            return False  # then it is ignored or failed as any such series
        return self._forward(session, job, route(self.routing, facts), sender, pipelines=False)

    def _forward(self, session: Session, job: Job, decision: RoutingDecision, sender: str, *,
                 pipelines: bool) -> bool:
        """Add the forwards of the selected rules to the series' (first) job; True if any.

        Without pipelines the job only forwards: it goes straight to dispatching. With
        pipelines, ``forward_when: done`` forwards join the results' deliveries (queued when
        the results are), ``received`` ones are due now."""
        rules: list[RuleConfig] = [o.rule for o in decision.selected if o.rule.forward]
        if not rules:
            return False
        now, queued = utcnow(), set()
        for rule in rules:
            for name in (forward_delivery(d) for d in rule.forward):
                if name in queued:  # two rules forwarding to one destination: sent once
                    continue
                queued.add(name)
                if pipelines and rule.forward_when == "done":
                    if name not in (job.destinations or []):
                        job.destinations = [*(job.destinations or []), name]
                    continue
                session.add(Delivery(job_id=job.id, destination=name, attempts=0,
                                     state=DeliveryState.PENDING, next_attempt_at=now))
        if not pipelines:
            job.rule, job.priority = rules[0].name, rules[0].priority
            job.sender = sender or None
            job.destinations = []
            job.transition(JobState.DISPATCHING)
            log_event(LOGGER, "job.forwarding", job=job.id, rule=rules[0].name,
                      destinations=[d for r in rules for d in r.forward])
        return True
