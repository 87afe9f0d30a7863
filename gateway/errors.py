"""Error responses: 422 names the field; a database or broker that is down is a 503 with Retry-After."""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5


def field_error(loc: list[str | int], message: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, for checks that need the server's settings."""
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": message, "type": kind}])


def unavailable(what: str) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"detail": f"{what} is unavailable; retry later"},
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class BrokerUnavailable(RuntimeError):
    """The task could not be handed to the broker."""


def _plain_errors(errors: list[dict]) -> list[dict]:
    # Only loc/msg/type: echoing the input back could carry NaN or NUL bytes that JSON cannot hold.
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _plain_errors(list(exc.errors()))
        fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) or e["loc"][0] for e in errors if e["loc"])
        return JSONResponse(status_code=422, content={"detail": errors, "message": f"invalid: {fields}"})

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return unavailable("the database")

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            return unavailable("the database")
        log.exception("database error")
        return JSONResponse(status_code=500, content={"detail": "internal database error"})

    @app.exception_handler(BrokerUnavailable)
    async def _broker_down(request: Request, exc: BrokerUnavailable) -> JSONResponse:
        log.warning("broker unavailable: %s", exc)
        return unavailable("the job queue")

    try:
        from audit.db import SchemaNotReady

        @app.exception_handler(SchemaNotReady)
        async def _schema(request: Request, exc: SchemaNotReady) -> JSONResponse:
            return unavailable(f"the database schema ({exc})")
    except ImportError:  # pragma: no cover
        pass
