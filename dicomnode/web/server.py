"""The console's web server inside ``dicomnode serve``: uvicorn in a thread of its own.

:meth:`WebServer.prepare` runs before the node takes its storage lock: it refuses an open
console on a non-loopback address, loads the TLS files and binds the socket, so a busy port or
a bad certificate stops ``serve`` with a message before anything else starts.
:meth:`WebServer.start` (after the DICOM listener is up) serves on that socket from the thread
``web``; uvicorn's event loop lives there and handlers run in its thread pool, so the console
never holds the DICOM listener or the job workers. :meth:`WebServer.stop` asks uvicorn to
finish and waits a few seconds.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import uvicorn
from prometheus_client import generate_latest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config
from dicomnode.health import DestinationChecker
from dicomnode.jobs.control import JobControl
from dicomnode.logs import log_event
from dicomnode.metrics import registry
from dicomnode.run.case import CaseRunner
from dicomnode.storage import StorageLayout
from dicomnode.web.app import WebContext, build_app
from dicomnode.web.auth import Authenticator, WebError, check_exposure, node_secret
from dicomnode.web.users import UsersError

LOGGER = logging.getLogger("dicomnode.web")
#: Seconds :meth:`WebServer.stop` waits for open requests.
STOP_TIMEOUT = 5.0


class WebServer:
    def __init__(self, config: Config, layout: StorageLayout, engine: Engine,
                 sessions: sessionmaker[Session], control: JobControl,
                 checker: DestinationChecker, wake: Callable[[], None],
                 runner: CaseRunner | None = None):
        self.config = config
        self.layout = layout
        self.engine = engine
        self.sessions = sessions
        self.control = control
        self.checker = checker
        self.wake = wake
        self.runner = runner
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.open = False

    def prepare(self) -> None:
        """Check the exposure, load TLS, bind the socket; raise :class:`WebError` if any fails."""
        web = self.config.web

        def refused(user: str, address: str | None, detail: str) -> None:
            context.record(user, address, "login-failed", None, "refused", detail)

        auth = Authenticator(web, node_secret(self.layout.web_secret), refused)
        context = WebContext(self.config, self.layout, self.engine, self.sessions, self.control,
                             self.checker, auth, self.wake, self.runner)
        try:
            self.open = check_exposure(web, context.auth.directory)
        except UsersError as exc:
            raise WebError(f"web.users_file: {exc}") from None
        scrape = registry(self.engine, self.layout, self.config,  # computed at each scrape
                          self.runner.warm_folders if self.runner is not None else None)
        config = uvicorn.Config(
            build_app(context, lambda: generate_latest(scrape)), log_config=None, access_log=False,
            lifespan="off", server_header=False, proxy_headers=False,
            timeout_graceful_shutdown=int(STOP_TIMEOUT),
            ssl_certfile=str(web.tls.cert_file) if web.tls.cert_file else None,
            ssl_keyfile=str(web.tls.key_file) if web.tls.key_file else None)
        try:
            config.load()
        except (OSError, ValueError) as exc:
            raise WebError(f"web.tls: cannot load {web.tls.cert_file} / {web.tls.key_file}: "
                           f"{exc}") from None
        family = socket.AF_INET6 if ":" in web.host else socket.AF_INET
        try:
            self._socket = socket.create_server((web.host, web.port), family=family)
            # Accepted connections inherit it: without it every response after the first on a
            # kept-alive connection (a page polling the API) waits ~40 ms for a delayed ACK.
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise WebError(f"the console cannot listen on {web.host}:{web.port} "
                           f"(web.host, web.port): {exc.strerror}") from None
        self._server = uvicorn.Server(config)

    def start(self) -> None:
        """Serve on the prepared socket from the thread ``web``."""
        assert self._server is not None and self._socket is not None, "prepare() first"
        server, sock = self._server, self._socket
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name="web", daemon=True)
        self._thread.start()
        web = self.config.web
        log_event(LOGGER, "web.listening", host=web.host, port=web.port, tls=web.tls.enabled,
                  open=self.open, docs=f"{'https' if web.tls.enabled else 'http'}://"
                                       f"{web.host}:{web.port}/docs")
        if self.open:
            log_event(LOGGER, "web.open", logging.WARNING,
                      message=f"no users in web.users_file: the console on {web.host}:{web.port} "
                              "is open to every local user and process; add one with "
                              "'dicomnode users add NAME --role operator'")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(1.0)
        if self._socket is not None:
            self._socket.close()
        log_event(LOGGER, "web.stopped")
