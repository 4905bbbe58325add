"""One attempt to deliver an event: a signed JSON POST.

Headers: ``X-Dicomnode-Event`` (``job.done``…), ``X-Dicomnode-Delivery`` (the event id, the
same on every retry) and, with a secret, ``X-Dicomnode-Signature: t=<unix time>,sha256=<hex>``,
the HMAC-SHA256 of ``"<t>." + body`` with the secret as key (the time in the signed text lets
a receiver refuse a replay of an old request). Any 2xx answer is a delivery; redirects are not
followed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import httpx

from dicomnode import __version__
from dicomnode.config import WebhookConfig

#: Characters of an error answer's body kept in the attempt's history.
ANSWER_EXCERPT = 200


@dataclass(frozen=True)
class Attempt:
    """What one POST gave: ``error_kind`` None means delivered."""

    status: int | None
    error_kind: str | None
    error: str | None
    seconds: float

    @property
    def delivered(self) -> bool:
        return self.error_kind is None


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},sha256={digest}"


def post(client: httpx.Client, hook: WebhookConfig, secret: bytes | None, body: bytes,
         event: str, event_id: str) -> Attempt:
    """POST ``body`` to ``hook.url`` within ``hook.timeout`` seconds per connect, send and
    read; never raises for what the network or the receiver does."""
    headers = {**hook.headers, "Content-Type": "application/json",
               "User-Agent": f"dicomnode/{__version__}", "X-Dicomnode-Event": event,
               "X-Dicomnode-Delivery": event_id}
    if secret is not None:
        headers["X-Dicomnode-Signature"] = signature(secret, int(time.time()), body)
    started = time.perf_counter()

    def attempt(status: int | None, kind: str | None, error: str | None) -> Attempt:
        return Attempt(status, kind, error, round(time.perf_counter() - started, 3))

    try:
        response = client.post(hook.url, content=body, headers=headers,
                               timeout=hook.timeout, follow_redirects=False)
    except httpx.TimeoutException as exc:
        return attempt(None, "timeout", f"no answer within {hook.timeout:g} s "
                                        f"({type(exc).__name__})")
    except httpx.TransportError as exc:
        return attempt(None, "unreachable", f"{type(exc).__name__}: {exc}")
    if response.is_success:
        return attempt(response.status_code, None, None)
    excerpt = response.text[:ANSWER_EXCERPT].strip()
    return attempt(response.status_code, "http-status",
                   f"HTTP {response.status_code} {response.reason_phrase}"
                   + (f": {excerpt}" if excerpt else ""))
