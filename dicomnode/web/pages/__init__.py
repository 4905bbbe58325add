"""The console's pages: server-rendered (Jinja2) over the API's own functions and JSON, with a
little plain JavaScript (``static/console.js``) that keeps the lists and the job page live by
polling the API. Everything is served by the node: no front-end build, no CDN.

Pages need the same user as the API (a session from the login page, or HTTP Basic); without
one they redirect to ``/login``. Operator buttons are disabled for a viewer, and the API refuses
the action anyway. Each page answers with a Content-Security-Policy that allows only the node's
own scripts, styles and images.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from dicomnode.store import CANCELLABLE_STATES, RETRYABLE_STATES, JobState, SeriesState
from dicomnode.web import api, setup_api
from dicomnode.web.app import API, WebContext, context_of
from dicomnode.web.auth import Principal
from dicomnode.web.pages import data
from dicomnode.web.pages.measurements import MeasurementTable, read_measurements

WEB = Path(__file__).resolve().parent.parent
TEMPLATES = WEB / "templates"
STATIC = WEB / "static"
#: Rows per page of the lists (the API's own limit is higher; a page must stay fast).
PAGE_SIZE = 50
#: Dead letters listed per destination (newest job first).
DEAD_LETTERS = 50
#: SR measurement tables kept parsed (the files of a finished job do not change).
SR_CACHE = 64
#: Bytes a login form may have.
LOGIN_FORM_BYTES = 4096
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: The columns of the live lists (console.js's ROWS draw their cells): label, numeric.
COLUMNS = {
    "jobs": (("job", True), ("series", False), ("pipeline", False), ("rule", False),
             ("state", False), ("attempts", True), ("instances", True), ("created", False),
             ("updated", False), ("reason", False)),
    "series": (("series", False), ("modality", False), ("description", False),
               ("instances", True), ("state", False), ("revision", True),
               ("first received", False), ("last received", False)),
}
#: Milliseconds between refreshes of the overview and the destinations page.
REFRESH = 5000
Part = Annotated[Literal["body"] | None, Query(
    description="body: only the part the page refreshes")]
Offset = Annotated[int, Query(ge=0)]


class LoginRequired(Exception):
    def __init__(self, path: str):
        self.path = path


class PageError(Exception):
    def __init__(self, status: int, detail: str):
        self.status, self.detail = status, detail


def _caller(request: Request) -> Principal:
    try:
        return context_of(request).auth.principal(request)
    except HTTPException as exc:
        if exc.status_code == 401:
            query = f"?{request.url.query}" if request.url.query else ""
            raise LoginRequired(request.url.path + query) from None
        raise PageError(exc.status_code, str(exc.detail)) from None


Caller = Annotated[Principal, Depends(_caller)]
Context = Annotated[WebContext, Depends(context_of)]


def _local(path: str | None) -> str:
    """``path`` when it is a path on this site, else ``/`` (no open redirect)."""
    if not path or not path.startswith("/") or path.startswith(("//", "/\\")):
        return "/"
    return path


def _answer(call: Callable[[], Any]) -> Any:
    """The API function's answer; its HTTP errors (404, 409) as a page's."""
    try:
        return call()
    except HTTPException as exc:
        raise PageError(exc.status_code, str(exc.detail)) from None


# --- formatting (the same as console.js's, for what the script re-renders) --------------------

def when(moment: str | None) -> str:
    """An ISO 8601 UTC time as ``YYYY-MM-DD HH:MM:SS``."""
    return moment[:19].replace("T", " ") if moment else "–"


def size(value: float | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return "–"


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def job_version(job: dict[str, Any]) -> str:
    """What changes when the job page must be drawn again (console.js computes the same)."""
    deliveries = ",".join(f"{d['state']}{d['attempts']}" for d in job["deliveries"])
    return f"{job['state']}|{job['updated_at']}|{len(job['results']['files'])}|{deliveries}"


def timeline(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The states a job passed through, in time order, with the seconds it spent in each."""
    stamps = sorted((datetime.fromisoformat(t), s) for s, t in (job["stage_times"] or {}).items())
    spent = job["stage_seconds"]
    total = sum(spent.values()) or 1.0
    return [{"state": state, "at": moment.isoformat(), "seconds": spent.get(state),
             "share": spent.get(state, 0.0) / total} for moment, state in stamps]


def pager(path: str, params: dict[str, Any], offset: int, listed: dict[str, Any]
          ) -> dict[str, Any]:
    """Where the newer and older pages of a list are, and what this one shows."""
    def at(value: int) -> str:
        return f"{path}?{urlencode({**params, 'offset': value})}"

    total, shown = listed["total"], len(listed["items"])
    return {"total": total, "first": offset + 1 if shown else 0, "last": offset + shown,
            "newer": at(max(0, offset - PAGE_SIZE)) if offset else None,
            "older": at(offset + PAGE_SIZE) if offset + PAGE_SIZE < total else None}


def _result_names(files: list[dict[str, Any]], suffix: str) -> list[str]:
    return [f["name"] for f in files if f["name"].lower().endswith(suffix)]


# --- the pages ------------------------------------------------------------------------------

def _router(templates: Jinja2Templates) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @functools.lru_cache(maxsize=SR_CACHE)
    def measurements(path: str, _modified: int, _size: int) -> MeasurementTable:
        return read_measurements(Path(path))

    def page(request: Request, template: str, caller: Principal | None, /, *,
             http_status: int = 200, **values: Any) -> HTMLResponse:
        context = context_of(request)
        return templates.TemplateResponse(request, template, {
            "caller": caller, "operator": caller is not None and caller.role == "operator",
            "open": context.auth.open, "api": API, **values}, status_code=http_status,
            headers=HEADERS)

    @router.get("/login", response_class=HTMLResponse)
    def login(request: Request, context: Context, next: str | None = None) -> Response:
        if context.auth.open:
            return RedirectResponse(_local(next), 303)
        return page(request, "login.html", None, next=_local(next))

    @router.post("/login", response_class=HTMLResponse)
    async def log_in(request: Request, context: Context) -> Response:
        """The login form: ``POST /api/v1/login``'s session cookies, then back to ``next``.
        (The page cannot call that API from script: its 401 carries a Basic challenge, and
        browsers answer one with their own password dialog.)"""
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc.lower() not in {
                request.headers.get("host", "").lower(),
                urlsplit(context.config.web.public_url).netloc.lower()}:
            raise PageError(403, f"cross-origin login from {origin} refused")
        if int(request.headers.get("content-length") or 0) > LOGIN_FORM_BYTES:
            raise PageError(413, "the login form is too large")
        form = parse_qs((await request.body())[:LOGIN_FORM_BYTES].decode("utf-8", "replace"))
        name, password, target = (form.get(key, [""])[0] for key in ("name", "password", "next"))
        answer = RedirectResponse(_local(target), 303)
        try:  # bcrypt: off the event loop
            await run_in_threadpool(api.login, api.Login(name=name, password=password),
                                    request, answer, context)
        except HTTPException as exc:
            return page(request, "login.html", None, http_status=exc.status_code,
                        next=_local(target), name=name, problem=str(exc.detail))
        return answer

    def live(request: Request, caller: Principal, part: str | None, body: str, /, *,
             heading: str, refresh: str, interval: int = REFRESH, watch: str | None = None,
             **values: Any) -> HTMLResponse:
        """A page whose ``body`` console.js fetches again (``part=body``: that part alone)."""
        return page(request, body if part else "live.html", caller, body=body, heading=heading,
                    refresh=refresh, interval=interval, watch=watch, **values)

    def listing(request: Request, caller: Principal, kind: str, listed: dict[str, Any],
                params: dict[str, Any], offset: int, states: list[str], text_filter: str,
                heading: str) -> HTMLResponse:
        return page(request, "list.html", caller, nav=kind, heading=heading, kind=kind,
                    path=f"/{kind}", listed=listed, params=params, states=states,
                    text_filter=text_filter, columns=COLUMNS[kind],
                    pager=pager(f"/{kind}", params, offset, listed),
                    query=urlencode({**params, "limit": PAGE_SIZE, "offset": offset}))

    @router.get("/", response_class=HTMLResponse)
    def overview(request: Request, caller: Caller, context: Context, part: Part = None
                 ) -> HTMLResponse:
        return live(request, caller, part, "overview_body.html", heading="Overview",
                    refresh="/?part=body", nav="overview", data=data.overview(context))

    @router.get("/series", response_class=HTMLResponse)
    def series_list(request: Request, caller: Caller, context: Context,
                    state: SeriesState | None = None, modality: str | None = None,
                    offset: Offset = 0) -> HTMLResponse:
        params = {k: v for k, v in (("state", state), ("modality", modality)) if v}
        listed = api.list_series(context, state=state, modality=modality, received_after=None,
                                 received_before=None, limit=PAGE_SIZE, offset=offset)
        return listing(request, caller, "series", listed, params, offset,
                       [s.value for s in SeriesState], "modality", "Series")

    @router.get("/series/{series_instance_uid}", response_class=HTMLResponse)
    def series(request: Request, series_instance_uid: str, caller: Caller, context: Context
               ) -> HTMLResponse:
        found = _answer(lambda: api.get_series(series_instance_uid, context))
        return page(request, "series.html", caller, nav="series", series=found)

    @router.get("/jobs", response_class=HTMLResponse)
    def jobs(request: Request, caller: Caller, context: Context, state: JobState | None = None,
             pipeline: str | None = None, offset: Offset = 0) -> HTMLResponse:
        params = {k: v for k, v in (("state", state), ("pipeline", pipeline)) if v}
        listed = api.list_jobs(context, state=state, pipeline=pipeline, limit=PAGE_SIZE,
                               offset=offset)
        return listing(request, caller, "jobs", listed, params, offset,
                       [s.value for s in JobState], "pipeline", "Jobs")

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job(request: Request, job_id: int, caller: Caller, context: Context, part: Part = None
            ) -> HTMLResponse:
        found = _answer(lambda: api.get_job(job_id, context))
        series = _answer(lambda: api.get_series(found["series_instance_uid"], context))
        files = found["results"]["files"]
        table, problem = None, None
        for name in _result_names(files, "_sr.dcm")[:1]:
            path = context.layout.results(job_id) / name
            try:
                stat = path.stat()
                table = measurements(str(path), stat.st_mtime_ns, stat.st_size)
            except (OSError, ValueError) as exc:
                problem = str(exc)
        viewer = context.config.web.viewer_url
        return live(
            request, caller, part, "job_body.html", heading=f"Job {job_id}", heading_in_body=True,
            refresh=f"/jobs/{job_id}?part=body", interval=2000, watch=f"{API}/jobs/{job_id}",
            nav="jobs", job=found, series=series, timeline=timeline(found),
            version=job_version(found), files_url=f"{API}/jobs/{job_id}/files/",
            preview=_result_names(files, "preview.png")[:1],
            segs=_result_names(files, "_seg.dcm"), srs=_result_names(files, "_sr.dcm"),
            measurements=table, measurements_problem=problem,
            retryable=found["state"] in {s.value for s in RETRYABLE_STATES},
            cancellable=found["state"] in {s.value for s in CANCELLABLE_STATES},
            ohif=(f"{viewer}/viewer?StudyInstanceUIDs={quote(series['study_instance_uid'])}"
                  if viewer else None))

    @router.get("/destinations", response_class=HTMLResponse)
    def destinations(request: Request, caller: Caller, context: Context, part: Part = None
                     ) -> HTMLResponse:
        return live(request, caller, part, "destinations_body.html", heading="Destinations",
                    refresh="/destinations?part=body", nav="destinations",
                    destinations=api.list_destinations(context)["items"],
                    counts=data.deliveries_by_destination(context),
                    dead={name: api.list_dead_letters(name, context, limit=DEAD_LETTERS, offset=0)
                          for name in context.config.destinations})

    @router.get("/models", response_class=HTMLResponse)
    def models(request: Request, caller: Caller, context: Context) -> HTMLResponse:
        return page(request, "models.html", caller, nav="models",
                    models=setup_api.list_models(caller, context)["items"],
                    used=data.rule_models(context), store=str(context.config.models.path),
                    device=context.config.models.device)

    @router.get("/audit", response_class=HTMLResponse)
    def audit(request: Request, caller: Caller, context: Context, offset: Offset = 0
              ) -> HTMLResponse:
        actions = api.list_audit(context, action=None, user=None, limit=PAGE_SIZE, offset=offset)
        return page(request, "audit.html", caller, nav="audit", actions=actions,
                    associations=api.list_associations(context, outcome=None, limit=PAGE_SIZE,
                                                       offset=0),
                    refusals=api.list_refusals(context, kind=None, limit=PAGE_SIZE, offset=0),
                    pager=pager("/audit", {}, offset, actions))

    return router


def install(app: FastAPI) -> None:
    """Add the pages, their static files (``/static``) and their error pages to ``app``."""
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters.update(when=when, size=size, seconds=seconds)

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(f"/login?next={quote(exc.path, safe='/')}", 303)

    async def page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)
        return templates.TemplateResponse(request, "error.html", {
            "caller": None, "operator": False, "open": False, "api": API, "status": exc.status,
            "detail": exc.detail}, status_code=exc.status, headers=HEADERS)

    app.include_router(_router(templates))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PageError, page_error)


__all__ = ["install"]
