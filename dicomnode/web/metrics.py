"""``GET /metrics``: the node's Prometheus metrics, behind a bearer token when
``web.metrics_token`` is set (scrapers send ``Authorization: Bearer <token>``)."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request, Response

#: The Prometheus text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def route(render: Callable[[], bytes], token: str) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics(request: Request) -> Response:
        if token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            # bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 401)
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), token.encode()):
                raise HTTPException(401, "metrics need Authorization: Bearer <web.metrics_token>",
                                    headers={"WWW-Authenticate": "Bearer"})
        return Response(render(), media_type=CONTENT_TYPE)

    return router
