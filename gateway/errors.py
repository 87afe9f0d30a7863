"""Error responses: 422 names the field; a database or broker that is down is a 503 with Retry-After; an
unhandled exception is a 500 that names nothing of the server's internals.

Every error of the API has one shape, `Problem`: `{"detail": "message"}`, or for a request that is not valid
`{"detail": [{"loc", "msg", "type"}, ...], "message": "invalid: field, ..."}`. The one exception is the
OpenAI-compatible path (`/v1/images/`), whose errors are in OpenAI's shape (`OpenAIErrorBody`) so that
OpenAI's SDKs raise their usual exceptions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5
OPENAI_PATHS = "/v1/images/"


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, `query`, `path` or `header`, then the field.")
    msg: str
    type: str


class Problem(BaseModel):
    """Every error response of the API (but the OpenAI-compatible path)."""

    detail: str | list[FieldError] = Field(
        description="What went wrong: a message, or for an invalid request one entry per field."
    )
    message: str | None = Field(default=None, description="For an invalid request: the fields, in one line.")


class OpenAIError(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, or server_error.")
    param: str | None = Field(description="The request parameter the error is about.")
    code: str | None = Field(description="content_policy_violation (halted), held_for_review (flagged), ...")


class OpenAIErrorBody(BaseModel):
    """Errors of `/v1/images/` in OpenAI's shape; a gate decision adds the job, score, policy to `error`."""

    error: OpenAIError


def openai_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error response in OpenAI's shape (`{"error": {"message", "type", "param", "code", ...}}`)."""
    error = {"message": message, "type": type_, "param": param, "code": code, **(extra or {})}
    return JSONResponse(status_code=status, content={"error": error}, headers=headers)


def _openai_path(request: Request) -> bool:
    return request.url.path.startswith(OPENAI_PATHS)


OPENAI_CODES = {
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    429: "rate_limit_exceeded",
}


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


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _readable_body_errors(request: Request, exc: RequestValidationError, errors: list[dict]) -> list[dict]:
    """A JSON syntax error names its line and column (not a character offset); a body sent without
    `Content-Type: application/json` (curl's `-d` sends a form type) says that this header is missing."""
    raw = list(exc.errors())
    content_type = request.headers.get("content-type", "")
    for error, original in zip(errors, raw, strict=True):
        loc = error["loc"]
        if error["type"] == "json_invalid" and len(loc) == 2 and isinstance(loc[1], int):
            doc = exc.body if isinstance(exc.body, str) else ""
            pos = min(loc[1], len(doc))
            line, column = doc.count("\n", 0, pos) + 1, pos - doc.rfind("\n", 0, pos)
            why = (original.get("ctx") or {}).get("error") or "syntax error"
            error["loc"] = ["body"]
            error["msg"] = f"not valid JSON at line {line}, column {column}: {why}"
        elif loc == ["body"] and error["type"] == "model_attributes_type" and not _is_json(content_type):
            said = f"Content-Type: {content_type}" if content_type else "no Content-Type"
            error["msg"] = (
                f"the body must be JSON sent with Content-Type: application/json (this request has {said})"
            )
            error["type"] = "content_type"
    return errors


def install_error_handlers(
    app: FastAPI, html_page: Callable[[Request, StarletteHTTPException], Response | None] | None = None
) -> None:
    """`html_page`: the page a browser gets instead of JSON where it returns one (the dashboard's)."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        page = html_page(request, exc) if html_page is not None else None
        if page is not None:
            return page
        if not _openai_path(request):
            return await http_exception_handler(request, exc)
        kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return openai_error(
            exc.status_code,
            str(exc.detail),
            type_=kind,
            code=OPENAI_CODES.get(exc.status_code),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _readable_body_errors(request, exc, _plain_errors(list(exc.errors())))
        if _openai_path(request) and errors:
            first = errors[0]
            param = ".".join(str(p) for p in first["loc"][1:]) or None
            if first["type"] == "extra_forbidden":
                message = f"Unrecognized request argument supplied: {param}"
            else:
                message = f"{param}: {first['msg']}" if param else first["msg"]
            return openai_error(400, message, param=param, code=first["type"])
        fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) or e["loc"][0] for e in errors if e["loc"])
        body = [
            e["msg"] for e in errors if e["loc"] == ["body"] and e["type"] in ("json_invalid", "content_type")
        ]
        message = f"invalid: body: {body[0]}" if body else f"invalid: {fields}"
        return JSONResponse(status_code=422, content={"detail": errors, "message": message})

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

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware answers with this, then re-raises: the server logs the traceback
        if _openai_path(request):
            return openai_error(500, "internal server error", type_="server_error")
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

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
