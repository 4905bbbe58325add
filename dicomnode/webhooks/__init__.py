"""Webhooks: a JSON POST to the endpoints under ``webhooks`` in ``config.yaml`` when a job is
done, failed or dead.

``event`` builds the body (the one definition of an event's JSON), ``outbox`` writes one row per
webhook in the transaction that moves the job to its final state, ``post`` makes one signed
HTTP request, and ``deliverer`` works the outbox from a thread per webhook with retries,
doubling back-off and a final ``given-up``. Every attempt is kept on the row and shown with the
job (``webhooks`` in its JSON).
"""

from dicomnode.webhooks.deliverer import WebhookDeliverer
from dicomnode.webhooks.event import EVENT_OF_STATE, event_payload
from dicomnode.webhooks.outbox import Outbox
from dicomnode.webhooks.post import Attempt, post, signature

__all__ = ["EVENT_OF_STATE", "Attempt", "Outbox", "WebhookDeliverer", "event_payload", "post",
           "signature"]
