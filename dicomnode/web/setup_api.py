"""The routes of ``/api/v1`` over what the node is set up with: its models (installed, version,
warm in this process, ``verify``) and its routing rules (the list, and a test of a series the
node holds against them, decided as the router decides).

Reads need any user; ``verify`` needs an operator and is written to the operator audit.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.grouping import SeriesKind, series_kind
from dicomnode.models.registry import REGISTRY, ModelError, ModelStore, model_rows
from dicomnode.rules.engine import route
from dicomnode.rules.router import series_facts
from dicomnode.store import Instance, JobError, Series
from dicomnode.web.api import Caller, Context
from dicomnode.web.app import WebContext
from dicomnode.web.auth import require_role

router = APIRouter()


def _models(context: WebContext) -> list[dict[str, Any]]:
    warm = context.runner.warm_folders() if context.runner is not None else []
    return model_rows(ModelStore(context.config.models.path), warm)


@router.get("/models", tags=["models"],
            summary="Every model of the registry: installed or not, version, warm or not")
def list_models(_caller: Caller, context: Context) -> dict[str, Any]:
    items = _models(context)
    return {"total": len(items), "items": items}


@router.post("/models/{name}/verify", tags=["models"],
             summary="Load an installed model in the node and segment a tiny volume with it "
                     "(as `dicomnode models verify`; waits for the device like a job)")
def verify_model(name: str, request: Request, caller: Caller, context: Context
                 ) -> dict[str, Any]:
    from dicomnode.models.weights import verify

    require_role(caller, "operator")
    address = request.client.host if request.client else None
    if name not in REGISTRY:
        raise HTTPException(404, f"there is no model {name!r} (known: {', '.join(REGISTRY)})")
    if context.runner is None:
        raise HTTPException(503, "this console has no model runtime")
    target = f"model:{name}"
    try:
        installed = ModelStore(context.config.models.path).require(name)
        components = verify(installed, context.runner.runtime)
    except ModelError as exc:
        context.record(caller.name, address, "verify", target, "failed", str(exc))
        raise HTTPException(409, str(exc)) from None
    context.record(caller.name, address, "verify", target, "ok")
    return {"model": name, "version": installed.version,
            "device": str(context.runner.runtime.device),
            "components": [vars(c) for c in components],
            "models": [m for m in _models(context) if m["name"] == name]}


@router.get("/rules", tags=["rules"], summary="The routing rules, in the order they are tried")
def list_rules(_caller: Caller, context: Context) -> dict[str, Any]:
    routing = context.config.routing
    items = [rule.model_dump(mode="json") for rule in routing.rules]
    return {"mode": routing.mode, "total": len(items), "items": items}


@router.post("/rules/test", tags=["rules"],
             summary="Which rules a series the node holds matches, and why (as `dicomnode "
                     "rules test`, from the held instances)")
def test_rules(_caller: Caller, context: Context,
               series_instance_uid: str = Query(description="a series held in the index")
               ) -> dict[str, Any]:
    with Session(context.engine) as session:
        series = session.scalar(select(Series).where(
            Series.series_instance_uid == series_instance_uid))
        if series is None:
            raise HTTPException(404, f"no series {series_instance_uid} is held")
        classes = set(session.scalars(select(Instance.sop_class_uid)
                                      .where(Instance.series_id == series.id)))
        kind = series_kind(series.is_image, classes | {series.sop_class_uid})
        try:
            facts, sender = series_facts(session, series.id, context.layout.spool)
        except (JobError, OSError) as exc:
            raise HTTPException(409, f"the series cannot be read: {exc}") from None
    decision = route(context.config.routing, facts).as_json(volume=kind is SeriesKind.VOLUME)
    return {"series_instance_uid": series_instance_uid, "kind": kind.value,
            "sender": sender or None,
            "facts": {k: v for k, v in vars(facts).items() if k != "extra"}, **decision}


__all__ = ["router"]
