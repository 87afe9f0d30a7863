"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from gateway.metrics import require_metrics_access

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up.")
async def healthz() -> dict[str, str]:  # on the event loop: it answers even when every worker thread is busy
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


@router.get(
    "/metrics",
    summary="Prometheus metrics (the operator's: a bearer EMOE_METRICS_TOKEN, else loopback clients only).",
    response_class=Response,
    dependencies=[Depends(require_metrics_access)],
    responses={
        401: {"description": "EMOE_METRICS_TOKEN is set and was not sent."},
        403: {"description": "No EMOE_METRICS_TOKEN is set and the client is not on loopback."},
    },
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
