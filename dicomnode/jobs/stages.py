"""The middle of the node wired in one place: route → run → dispatch, with health checks,
retention, webhooks and the people's controls, all over one index database and one storage
folder."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config
from dicomnode.dispatcher import Dispatcher
from dicomnode.health import DestinationChecker
from dicomnode.jobs.control import JobControl
from dicomnode.retention import Retention
from dicomnode.rules.router import Router
from dicomnode.run.worker import CaseRunnerLike, Worker
from dicomnode.storage import ResultsStore, Spool, StorageLayout
from dicomnode.webhooks import Outbox, WebhookDeliverer


@dataclass(frozen=True)
class Stages:
    router: Router
    worker: Worker
    dispatcher: Dispatcher
    health: DestinationChecker
    retention: Retention
    control: JobControl
    #: Delivers the events the outbox writes when a job is done, failed or dead.
    webhooks: WebhookDeliverer

    @classmethod
    def build(cls, config: Config, sessions: sessionmaker[Session], spool: Spool,
              runner: CaseRunnerLike) -> Stages:
        results = ResultsStore(StorageLayout.of(config.storage), fsync=config.storage.fsync)
        dispatcher = Dispatcher(config, sessions, results)
        webhooks = WebhookDeliverer(config, sessions)
        # Every final state reached through these sessions writes its events in the same
        # transaction, whichever stage moved the job.
        Outbox(config, on_event=webhooks.wake).watch(sessions)
        return cls(
            router=Router(config.routing, sessions, spool),
            worker=Worker(sessions, spool, results, runner, dispatcher),
            dispatcher=dispatcher,
            health=DestinationChecker(config, sessions),
            retention=Retention(config.retention, config.storage.min_free, sessions, spool,
                                results),
            control=JobControl(sessions, results, dispatcher),
            webhooks=webhooks,
        )
