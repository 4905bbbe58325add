"""Works the outbox: a thread per webhook POSTs its due events, oldest first.

One thread each, so a receiver that is down or slow (every attempt waiting out its timeout)
delays only its own events. A failed attempt is retried after ``initial_backoff`` seconds,
doubling up to ``max_backoff``; after ``retries`` retries the event is ``given-up``. Each
attempt (time, HTTP status, error, seconds) is appended to the event's ``history``. Pending
events survive a restart in the index; one whose webhook left ``config.yaml`` is given up at
start, since nothing would ever deliver it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config, ConfigError, ConfigProblem, WebhookConfig
from dicomnode.dispatcher import backoff
from dicomnode.logs import log_event
from dicomnode.store import WebhookEvent, WebhookState, as_utc, utcnow
from dicomnode.store.views import iso
from dicomnode.webhooks.post import Attempt, post

LOGGER = logging.getLogger("dicomnode.webhooks")

#: Longest sleep of an idle thread: a wake-up normally comes first (a new event), this only
#: bounds how late an event written by another process would be seen.
IDLE_WAIT = 5.0
#: Events taken per look at the outbox.
BATCH = 50


def _secret_key(index: int, hook: WebhookConfig) -> str:
    return f"webhooks[{index}].{'secret_env' if hook.secret_env else 'secret_file'}"


class WebhookDeliverer:
    """Runs from :meth:`start` until :meth:`stop`; :meth:`wake` makes every thread look now."""

    def __init__(self, config: Config, sessions: sessionmaker[Session]):
        self.config = config
        self.sessions = sessions
        self._secrets: dict[str, bytes | None] | None = None
        self._stop = threading.Event()
        self._wakes = {hook.name: threading.Event() for hook in config.webhooks}
        self._threads: list[threading.Thread] = []

    def prepare(self) -> None:
        """Read the signing keys; a :class:`ConfigError` names the key of each one that
        cannot be read. ``serve`` calls it before taking the storage lock; a process that only
        writes events (the outbox) never needs the keys."""
        secrets, problems = {}, []
        for index, hook in enumerate(self.config.webhooks):
            try:
                secrets[hook.name] = hook.secret()
            except ValueError as exc:
                problems.append(ConfigProblem(_secret_key(index, hook), str(exc)))
        if problems:
            raise ConfigError(None, problems)
        self._secrets = secrets

    def start(self) -> None:
        if self._secrets is None:
            self.prepare()
        abandoned = self.give_up_unknown()
        if not self.config.webhooks:
            return
        log_event(LOGGER, "webhooks.starting", webhooks=[h.name for h in self.config.webhooks],
                  given_up=abandoned)
        self._threads = [threading.Thread(target=self._run, args=(hook,), daemon=True,
                                          name=f"webhook-{hook.name}")
                         for hook in self.config.webhooks]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        for flag in self._wakes.values():
            flag.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop; an attempt still waiting on its receiver is abandoned unrecorded (the event
        stays pending and is sent again at the next start)."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def give_up_unknown(self) -> int:
        """Give up pending events of webhooks no longer configured; returns how many."""
        known = [hook.name for hook in self.config.webhooks]
        with self.sessions.begin() as session:
            result = session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.state == WebhookState.PENDING,
                       WebhookEvent.webhook.not_in(known))
                .values(state=WebhookState.GIVEN_UP, error_kind="unknown-webhook",
                        error_message="the webhook is no longer in config.yaml"))
            return int(getattr(result, "rowcount", 0) or 0)

    def _run(self, hook: WebhookConfig) -> None:
        flag = self._wakes[hook.name]
        with httpx.Client() as client:  # one per thread: keeps the connection alive
            while not self._stop.is_set():
                wait = IDLE_WAIT
                try:
                    wait = self.deliver_due(hook, client)
                except Exception:  # keep delivering; the traceback goes to the log
                    LOGGER.exception("webhook %s: delivery pass failed", hook.name)
                flag.wait(wait)
                flag.clear()

    def deliver_due(self, hook: WebhookConfig, client: httpx.Client) -> float:
        """Attempt the due events of ``hook``; returns the seconds until the next one is due
        (at most :data:`IDLE_WAIT`)."""
        with self.sessions() as session:
            due = session.execute(
                select(WebhookEvent.id, WebhookEvent.event, WebhookEvent.event_id,
                       WebhookEvent.payload)
                .where(WebhookEvent.webhook == hook.name,
                       WebhookEvent.state == WebhookState.PENDING,
                       WebhookEvent.next_attempt_at <= utcnow())
                .order_by(WebhookEvent.next_attempt_at, WebhookEvent.id).limit(BATCH)).all()
        for row_id, event, event_id, payload in due:
            if self._stop.is_set():
                return 0.0
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
            secret = (self._secrets or {}).get(hook.name)
            self.record(hook, row_id, post(client, hook, secret, body, f"job.{event}", event_id))
        with self.sessions() as session:
            next_at = session.scalar(select(func.min(WebhookEvent.next_attempt_at)).where(
                WebhookEvent.webhook == hook.name, WebhookEvent.state == WebhookState.PENDING))
        if next_at is None:
            return IDLE_WAIT
        return min(IDLE_WAIT, max(0.0, (as_utc(next_at) - utcnow()).total_seconds()))

    def record(self, hook: WebhookConfig, row_id: int, attempt: Attempt) -> None:
        """Keep ``attempt`` in the event's history and decide what comes next."""
        now = utcnow()
        with self.sessions.begin() as session:
            row = session.get(WebhookEvent, row_id)
            if row is None or row.state != WebhookState.PENDING:
                return
            row.attempts += 1
            row.history = [*(row.history or []), {  # a new list: JSON columns track assignment
                "at": iso(now), "status": attempt.status, "error": attempt.error,
                "seconds": attempt.seconds}]
            row.error_kind, row.error_message = attempt.error_kind, attempt.error
            if attempt.delivered:
                row.state, row.delivered_at = WebhookState.DELIVERED, now
            elif row.attempts > hook.retries:
                row.state = WebhookState.GIVEN_UP
            else:
                row.next_attempt_at = now + timedelta(seconds=backoff(
                    row.attempts, hook.initial_backoff, hook.max_backoff))
            job_id, state, attempts = row.job_id, row.state, row.attempts
        fields: dict[str, Any] = dict(job=job_id, webhook=hook.name, attempt=attempts,
                                      status=attempt.status, seconds=attempt.seconds)
        if attempt.delivered:
            log_event(LOGGER, "webhook.delivered", **fields)
        else:
            log_event(LOGGER, "webhook.given_up" if state == WebhookState.GIVEN_UP
                      else "webhook.failed", logging.WARNING, kind=attempt.error_kind,
                      reason=attempt.error, **fields)
