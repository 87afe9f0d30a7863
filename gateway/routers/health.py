"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up.")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database, broker and at least one worker with its model loaded.",
    responses={503: {"description": "Something the service needs is not ready."}},
)
def readyz(request: Request) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        session = request.app.state.sessionmaker()
        try:
            session.execute(text("SELECT 1"))
            session.commit()
        finally:
            session.close()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    dispatcher = request.app.state.dispatcher
    checks["broker"] = "ok" if dispatcher.broker_ok() else "unavailable"
    try:
        workers = dispatcher.ready_workers()
    except Exception:
        workers = 0
    checks["workers_ready"] = workers
    ready = checks["database"] == "ok" and checks["broker"] == "ok" and workers > 0
    return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, "checks": checks})


@router.get("/metrics", summary="Prometheus metrics.", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
