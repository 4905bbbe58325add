"""The outbox: events written in the very transaction that moves a job to done, failed or dead.

The stages move jobs with :meth:`~dicomnode.store.Job.transition` in many places (routing,
the worker, dispatch); rather than a call at each, a ``before_flush`` listener on the node's
writer sessions sees every job whose state changed to one of those, and adds one
:class:`~dicomnode.store.WebhookEvent` per webhook that wants it to the same flush. The job's
new state and its events commit together or not at all, so a restart loses none.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config, WebhookEventName
from dicomnode.store import Delivery, Job, JobState, WebhookEvent, WebhookState, utcnow
from dicomnode.webhooks.event import EVENT_OF_STATE, event_payload


def reached(job: Job) -> WebhookEventName | None:
    """The event of the state ``job`` entered since its last flush, if it is one."""
    history = inspect(job).attrs.state.history
    if not history.added:
        return None
    state = JobState(history.added[-1])
    if history.deleted and JobState(history.deleted[0]) == state:
        return None
    return EVENT_OF_STATE.get(state)


class Outbox:
    """Writes webhook events for jobs reaching a final state; ``on_event`` runs after a commit
    that wrote any (the deliverer's wake-up)."""

    def __init__(self, config: Config, on_event: Callable[[], None]):
        self.config = config
        self.on_event = on_event
        #: ``Session.info`` key: this transaction wrote events of this outbox.
        self._wrote = f"dicomnode.webhooks.wrote.{id(self)}"

    def watch(self, sessions: sessionmaker[Session]) -> None:
        """Listen to every session of ``sessions`` (once per outbox)."""
        if self.config.webhooks and not event.contains(sessions, "before_flush",
                                                       self._before_flush):
            event.listen(sessions, "before_flush", self._before_flush)
            event.listen(sessions, "after_commit", self._after_commit)
            event.listen(sessions, "after_rollback", self._after_rollback)

    def record(self, session: Session, job: Job, kind: WebhookEventName) -> int:
        """Add the events of ``job`` reaching ``kind`` to ``session``; returns how many."""
        hooks = [h for h in self.config.webhooks_for(job.rule) if kind in h.events]
        if not hooks:
            return 0
        now = utcnow()
        with session.no_autoflush:  # inside a flush: read what the session holds as it is
            deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job.id)
                                         .order_by(Delivery.id)).all()
            for hook in hooks:
                event_id = str(uuid.uuid4())
                session.add(WebhookEvent(
                    job_id=job.id, webhook=hook.name, event=kind, event_id=event_id,
                    payload=event_payload(self.config, job, deliveries, kind, event_id, now),
                    state=WebhookState.PENDING, attempts=0, created_at=now,
                    next_attempt_at=now, history=[]))
        session.info[self._wrote] = True
        return len(hooks)

    def _before_flush(self, session: Session, _context: Any, _instances: Iterable[Any] | None
                      ) -> None:
        for job in [o for o in (*session.new, *session.dirty) if isinstance(o, Job)]:
            kind = reached(job)
            if kind is not None:
                self.record(session, job, kind)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(self._wrote, False):
            self.on_event()

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(self._wrote, None)
