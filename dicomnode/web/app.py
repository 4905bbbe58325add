"""The console's FastAPI application: the REST API under ``/api/v1`` (OpenAPI at ``/docs`` and
``/openapi.json``) and ``/metrics``.

Everything the app touches is in its :class:`WebContext` (no module state): the engine it reads
the index with, the sessions it writes the operator audit with, the node's
:class:`~dicomnode.jobs.control.JobControl` and destination checker. Handlers are plain
functions, so FastAPI runs them in its thread pool and a slow query or a C-ECHO never holds the
event loop. Each object's JSON is the one of :mod:`dicomnode.store.views`, the same as
``dicomnode status --json``. Errors are JSON: ``{"detail": ..., "status": ...}`` (422 adds
``errors``, the fields that failed validation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicomnode.config import Config
from dicomnode.health import DestinationChecker
from dicomnode.jobs.control import JobControl
from dicomnode.logs import log_event
from dicomnode.run.case import CaseRunner
from dicomnode.storage import StorageLayout
from dicomnode.store import OperatorAction, utcnow
from dicomnode.web.auth import Authenticator
from dicomnode.web.users import UsersError

LOGGER = logging.getLogger("dicomnode.web")
API = "/api/v1"


@dataclass
class WebContext:
    """What the console's handlers need from the running node."""

    config: Config
    layout: StorageLayout
    #: Reads (its own engine: no write transactions held by the console).
    engine: Engine
    #: Writes of the operator audit (the node's writer sessions).
    sessions: sessionmaker[Session]
    control: JobControl
    checker: DestinationChecker
    auth: Authenticator
    #: Called after a retry: the executor looks at the job table at once.
    wake: Callable[[], None]
    #: The serve's case runner: which models are warm, and ``verify`` on its runtime (none
    #: where the console runs without one).
    runner: CaseRunner | None = None

    @property
    def base_url(self) -> str:
        return self.config.web.base_url

    def link(self, path: str) -> str:
        return f"{self.base_url}{API}{path}"

    def record(self, user: str, address: str | None, action: str, target: str | None,
               outcome: str, detail: str | None = None) -> None:
        """One row of the operator audit, and a log line."""
        with self.sessions.begin() as session:
            session.add(OperatorAction(at=utcnow(), user=user, address=address, action=action,
                                       target=target, outcome=outcome, detail=detail))
        log_event(LOGGER, f"web.{action}", logging.INFO if outcome == "ok" else logging.WARNING,
                  user=user, address=address, target=target, outcome=outcome, detail=detail)


def context_of(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def _error(status: int, detail: Any, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, "status": status, **extra}, status_code=status,
                        headers=headers)


def build_app(context: WebContext, metrics: Callable[[], bytes] | None = None) -> FastAPI:
    """The application over ``context``; ``metrics`` renders ``/metrics`` when given."""
    from dicomnode.web import api, metrics as metrics_route, pages, setup_api

    app = FastAPI(title="dicomnode", version="1",
                  description="The operator API of a dicomnode: series, jobs, destinations and "
                              "the audit of associations, refusals and operator actions.")
    app.state.context = context

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, exc.detail, dict(exc.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                  for e in exc.errors()]
        return _error(422, "request validation failed", errors=jsonable_encoder(errors))

    @app.exception_handler(UsersError)
    async def _users(_request: Request, exc: UsersError) -> JSONResponse:
        LOGGER.error("web.users_file cannot be read: %s", exc)
        return _error(503, f"the users file cannot be read: {exc}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        LOGGER.exception("web request failed: %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    app.include_router(api.public, prefix=API)
    app.include_router(api.router, prefix=API)
    app.include_router(setup_api.router, prefix=API)
    pages.install(app)
    if metrics is not None:
        app.include_router(metrics_route.route(metrics, context.config.web.metrics_token))
    return app


__all__ = ["API", "WebContext", "build_app", "context_of"]
