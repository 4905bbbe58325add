"""The routes of ``/api/v1``.

Reads need any user (``viewer`` or ``operator``); retry, cancel and echo need ``operator`` and
are written to the operator audit (``GET /api/v1/audit``) with the user, address and time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from dicomnode.store import (
    AssociationOutcome,
    Delivery,
    DeliveryState,
    DestinationHealth,
    Instance,
    Job,
    JobError,
    JobState,
    OperatorAction,
    Series,
    SeriesState,
)
from dicomnode.store.views import (
    associations_json,
    delivery_json,
    destination_json,
    jobs_json,
    operator_action_json,
    rejections_json,
    series_json,
    workers_json,
)
from dicomnode.web.app import WebContext, context_of
from dicomnode.web.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Principal,
    require_role,
)

Context = Annotated[WebContext, Depends(context_of)]


def _principal(request: Request) -> Principal:
    return context_of(request).auth.principal(request)


Caller = Annotated[Principal, Depends(_principal)]
Limit = Annotated[int, Query(ge=1, le=1000, description="most items returned")]
Offset = Annotated[int, Query(ge=0, description="items skipped (newest first)")]

#: Routes that need no user: logging in.
public = APIRouter(tags=["session"])
#: Everything else: a user (any role) for reads, an operator for actions.
router = APIRouter(dependencies=[Depends(_principal)])


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


# --- session ----------------------------------------------------------------------------------

class Login(BaseModel):
    name: str
    password: str


@public.post("/login", summary="Log in: sets the session and CSRF cookies")
def login(body: Login, request: Request, response: Response, context: Context) -> dict[str, Any]:
    auth = context.auth
    user = auth.login(body.name, body.password, _address(request))
    cookie, csrf = auth.issue(user)
    secure = auth.secure_cookies
    response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True,
                        samesite="strict", secure=secure, path="/")
    response.set_cookie(CSRF_COOKIE, csrf, max_age=SESSION_SECONDS, httponly=False,
                        samesite="strict", secure=secure, path="/")
    return {"user": user.name, "role": user.role, "csrf_token": csrf,
            "csrf_header": "X-CSRF-Token"}


@router.post("/logout", tags=["session"], summary="End the session (clears its cookies)")
def logout(response: Response) -> dict[str, Any]:
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return {"logged_out": True}


@router.get("/me", tags=["session"], summary="Who the request is authenticated as")
def me(caller: Caller, context: Context) -> dict[str, Any]:
    return {"user": caller.name, "role": caller.role, "via": caller.via,
            "open": context.auth.open}


# --- series -----------------------------------------------------------------------------------

def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _page(session: Session, query: Any, limit: int, offset: int) -> tuple[int, list[Any]]:
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    return int(total or 0), list(session.scalars(query.limit(limit).offset(offset)).all())


@router.get("/series", tags=["series"], summary="Series held, newest first")
def list_series(
    context: Context,
    state: SeriesState | None = None,
    modality: str | None = None,
    received_after: Annotated[datetime | None, Query(
        description="received (last instance) at or after this time, ISO 8601")] = None,
    received_before: Annotated[datetime | None, Query(
        description="received (first instance) at or before this time, ISO 8601")] = None,
    limit: Limit = 100, offset: Offset = 0,
) -> dict[str, Any]:
    query = (select(Series).options(selectinload(Series.study))  # one query for the page's
             .order_by(Series.first_received_at.desc(), Series.id.desc()))
    if state is not None:
        query = query.where(Series.state == state)
    if modality:
        query = query.where(func.upper(Series.modality) == modality.upper())
    if received_after is not None:
        query = query.where(Series.last_received_at >= _utc(received_after))
    if received_before is not None:
        query = query.where(Series.first_received_at <= _utc(received_before))
    with Session(context.engine) as session:
        total, rows = _page(session, query, limit, offset)
        return {"total": total, "items": [series_json(s) for s in rows]}


@router.get("/series/{series_instance_uid}", tags=["series"],
            summary="One series: instances held, its revisions and their jobs")
def get_series(series_instance_uid: str, context: Context) -> dict[str, Any]:
    with Session(context.engine) as session:
        series = session.scalar(select(Series).where(
            Series.series_instance_uid == series_instance_uid))
        if series is None:
            raise HTTPException(404, f"there is no series {series_instance_uid}")
        held = session.scalar(select(func.count()).select_from(Instance).where(
            Instance.series_id == series.id)) or 0
        jobs = jobs_json(session, session.scalars(
            select(Job).where(Job.series_id == series.id).order_by(Job.id)).all())
        revisions: dict[int, dict[str, Any]] = {}
        for job in jobs:
            revision = revisions.setdefault(job["revision"], {
                "revision": job["revision"], "instances": job["instances"], "jobs": []})
            revision["jobs"].append(job["id"])
        revisions.setdefault(series.revision, {"revision": series.revision,
                                               "instances": series.instance_count, "jobs": []})
        return {**series_json(series), "instances_held": held,
                "revisions": [revisions[r] for r in sorted(revisions)], "jobs": jobs,
                "links": {"self": context.link(f"/series/{series_instance_uid}"),
                          "jobs": [context.link(f"/jobs/{j['id']}") for j in jobs]}}


# --- jobs -------------------------------------------------------------------------------------

@router.get("/jobs", tags=["jobs"], summary="Jobs, newest first")
def list_jobs(context: Context, state: JobState | None = None, pipeline: str | None = None,
              limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    query = select(Job).options(selectinload(Job.series)).order_by(Job.id.desc())
    if state is not None:
        query = query.where(Job.state == state)
    if pipeline:
        query = query.where(Job.pipeline == pipeline)
    with Session(context.engine) as session:
        total, rows = _page(session, query, limit, offset)
        return {"total": total, "items": jobs_json(session, rows)}


def _files(folder: Path) -> list[dict[str, Any]]:
    files = []
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        try:
            if path.is_file():
                files.append({"name": str(path.relative_to(folder)),
                              "bytes": path.stat().st_size})
        except OSError:
            continue  # purged meanwhile
    return files


@router.get("/jobs/{job_id}", tags=["jobs"],
            summary="One job: stage times, reason, deliveries and the files of its results")
def get_job(job_id: int, context: Context) -> dict[str, Any]:
    with Session(context.engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise HTTPException(404, f"there is no job {job_id}")
        detail = jobs_json(session, [job])[0]
        uid = job.series.series_instance_uid
    folder = context.layout.results(job_id)
    files = _files(folder)
    return {**detail,
            "results": {"folder": str(folder), "files": files},
            "links": {"self": context.link(f"/jobs/{job_id}"),
                      "series": context.link(f"/series/{uid}"),
                      "retry": context.link(f"/jobs/{job_id}/retry"),
                      "cancel": context.link(f"/jobs/{job_id}/cancel"),
                      "files": {f["name"]: context.link(f"/jobs/{job_id}/files/{f['name']}")
                                for f in files}}}


#: Media types of the files a job writes (anything else is sent as bytes).
MEDIA_TYPES = {".dcm": "application/dicom", ".png": "image/png", ".json": "application/json",
               ".gz": "application/gzip"}


def result_file(context: WebContext, job_id: int, name: str) -> Path:
    """The file ``name`` (relative, as ``results.files`` lists it) of a job's results; 404
    for a name that leaves the folder (``..``, an absolute path, a link out of it)."""
    folder = context.layout.results(job_id).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or path == folder or not path.is_file():
        raise HTTPException(404, f"job {job_id} has no result file {name}")
    return path


@router.get("/jobs/{job_id}/files/{name:path}", tags=["jobs"],
            summary="Download one of a job's result files (as listed in its results.files)",
            response_class=FileResponse,
            responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
def get_job_file(job_id: int, name: str, context: Context) -> FileResponse:
    path = result_file(context, job_id, name)
    media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    # An image is shown where it is opened (the job page's preview); the rest is saved.
    return FileResponse(path, media_type=media, filename=path.name,
                        content_disposition_type="inline" if media == "image/png"
                        else "attachment")


def _act(context: Context, caller: Principal, request: Request, action: str,
         job_id: int) -> dict[str, Any]:
    require_role(caller, "operator")
    target = f"job:{job_id}"
    try:
        if action == "retry":
            context.control.retry(job_id)
        else:
            context.control.cancel(job_id)
    except JobError as exc:
        context.record(caller.name, _address(request), action, target, exc.kind, str(exc))
        raise HTTPException(404 if exc.kind == "unknown-job" else 409, str(exc)) from None
    context.record(caller.name, _address(request), action, target, "ok")
    context.wake()
    with Session(context.engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return {"job": jobs_json(session, [job])[0],
                "links": {"self": context.link(f"/jobs/{job_id}")}}


@router.post("/jobs/{job_id}/retry", tags=["jobs"],
             summary="Re-queue a failed, dead or cancelled job (as `dicomnode jobs retry`)")
def retry_job(job_id: int, request: Request, caller: Caller, context: Context
              ) -> dict[str, Any]:
    return _act(context, caller, request, "retry", job_id)


@router.post("/jobs/{job_id}/cancel", tags=["jobs"],
             summary="Stop a job that has not finished (as `dicomnode jobs cancel`)")
def cancel_job(job_id: int, request: Request, caller: Caller, context: Context
               ) -> dict[str, Any]:
    return _act(context, caller, request, "cancel", job_id)


# --- destinations -----------------------------------------------------------------------------

def _destinations(context: WebContext, names: list[str]) -> list[dict[str, Any]]:
    with Session(context.engine) as session:
        return [destination_json(name, session.get(DestinationHealth, name)) for name in names]


@router.get("/destinations", tags=["destinations"],
            summary="Every peer results go to, with its last C-ECHO")
def list_destinations(context: Context) -> dict[str, Any]:
    return {"items": _destinations(context, list(context.checker.peers()))}


@router.post("/destinations/{name}/echo", tags=["destinations"],
             summary="C-ECHO a destination now and record the answer")
def echo_destination(name: str, request: Request, caller: Caller, context: Context
                     ) -> dict[str, Any]:
    require_role(caller, "operator")
    if name not in context.checker.peers():
        raise HTTPException(404, f"there is no destination {name}")
    reachable, detail = context.checker.check([name])[name]
    context.record(caller.name, _address(request), "echo", f"destination:{name}",
                   "ok" if reachable else "unreachable", detail)
    return _destinations(context, [name])[0]


@router.get("/destinations/{name}/dead-letters", tags=["destinations"],
            summary="Deliveries to a destination that gave up, newest job first")
def list_dead_letters(name: str, context: Context, limit: Limit = 100, offset: Offset = 0
                      ) -> dict[str, Any]:
    if name not in context.config.destinations:
        raise HTTPException(404, f"there is no destination {name}")
    with Session(context.engine) as session:
        query = (select(Delivery, Series.series_instance_uid)
                 .join(Job, Job.id == Delivery.job_id).join(Series, Series.id == Job.series_id)
                 # its results' deliveries and the source series forwarded to it
                 .where(Delivery.destination.in_((name, f"forward:{name}")),
                        Delivery.state == DeliveryState.DEAD))
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.execute(query.order_by(Delivery.job_id.desc()).limit(limit)
                               .offset(offset)).all()
        items = [{"job_id": delivery.job_id, "series_instance_uid": series_uid,
                  **delivery_json(delivery), "links": {"job": context.link(
                      f"/jobs/{delivery.job_id}")}} for delivery, series_uid in rows]
    return {"total": total, "items": items}


@router.post("/destinations/{name}/requeue", tags=["destinations"],
             summary="Send every dead letter of a destination again (once it is back)")
def requeue_dead_letters(name: str, request: Request, caller: Caller, context: Context
                         ) -> dict[str, Any]:
    require_role(caller, "operator")
    if name not in context.config.destinations:
        raise HTTPException(404, f"there is no destination {name}")
    jobs = context.control.requeue_dead_letters(name)
    context.record(caller.name, _address(request), "requeue", f"destination:{name}", "ok",
                   f"{len(jobs)} deliveries")
    context.wake()
    return {"destination": name, "requeued": len(jobs), "jobs": jobs}


# --- workers (jobs.backend: celery) -----------------------------------------------------------

@router.get("/workers", tags=["workers"],
            summary="dicomnode worker processes: the job each runs, last heartbeat, lost or not")
def list_workers(context: Context) -> dict[str, Any]:
    with Session(context.engine) as session:
        return {"items": workers_json(session)}


# --- audit ------------------------------------------------------------------------------------

@router.get("/associations", tags=["audit"], summary="DICOM associations, newest first")
def list_associations(context: Context, outcome: AssociationOutcome | None = None,
                      limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    with Session(context.engine) as session:
        return associations_json(session, limit, offset, outcome)


@router.get("/refusals", tags=["audit"], summary="Refused instances, newest first")
def list_refusals(context: Context, kind: str | None = None, limit: Limit = 100,
                  offset: Offset = 0) -> dict[str, Any]:
    with Session(context.engine) as session:
        return rejections_json(session, limit, offset, kind)


@router.get("/audit", tags=["audit"],
            summary="Operator actions (retry, cancel, echo) and refused logins, newest first")
def list_audit(context: Context, action: str | None = None, user: str | None = None,
               limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    query = select(OperatorAction).order_by(OperatorAction.id.desc())
    if action:
        query = query.where(OperatorAction.action == action)
    if user:
        query = query.where(OperatorAction.user == user)
    with Session(context.engine) as session:
        total, rows = _page(session, query, limit, offset)
        return {"total": total, "items": [operator_action_json(a) for a in rows]}


__all__ = ["public", "router"]
