"""A small HTTP server that plays the webhook receiver: http.server in a thread on a loopback
port, recording every POST; it can answer late (past the node's timeout) or with an error."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.service.conftest import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Receiver:
    """``start()``/``stop()`` may be called again: a receiver that is down and comes back on
    the same port. ``delay``: seconds before answering; ``status``: the answer's code."""

    def __init__(self, port: int | None = None, *, delay: float = 0.0, status: int = 200):
        self.port = port or free_port()
        self.delay = delay
        self.status = status
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/dicomnode"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                if receiver._release.wait(receiver.delay):
                    return  # stopping: hang up without an answer
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the node gave up waiting and closed the connection

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._release.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name=f"receiver-{self.port}").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.json for r in self.received]

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} POSTs came"
            time.sleep(0.1)


def verify(received: Received, secret: bytes) -> bool:
    """What a receiver does with ``X-Dicomnode-Signature: t=…,sha256=…``."""
    fields = dict(part.split("=", 1) for part in received.headers["X-Dicomnode-Signature"]
                  .split(","))
    expected = hmac.new(secret, f"{fields['t']}.".encode() + received.body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["sha256"])
