"""Exceptions of the client: each carries the HTTP status and the field and message the server sent."""

from __future__ import annotations

from typing import Any

import httpx


class EmoeGateError(Exception):
    """Base class of every error the client raises."""


class APIError(EmoeGateError):
    """The server answered with an error status.

    `message` is the server's message; `field` the first field it named (`prompt`, `labels.region`, `wait`),
    or None; `errors` every field error as the server sent it (`loc`, `msg`, `type`); `body` the parsed body.
    """

    status_code: int

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        body: Any = None,
        response: httpx.Response | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.field = field
        self.errors = errors or []
        self.body = body
        self.response = response
        where = f" ({field})" if field else ""
        super().__init__(f"{status_code}{where}: {message}")


class BadRequestError(APIError):
    """400: the request was refused as it stands."""


class AuthenticationError(APIError):
    """401: the API key is missing or not valid."""


class PermissionDeniedError(APIError):
    """403: the key's role does not allow this, or the images await human review."""


class NotFoundError(APIError):
    """404: no such job for this tenant (or no such image)."""


class ConflictError(APIError):
    """409: the job had already finished, the Idempotency-Key was used with another request, and so on.

    `job` holds the job as the server showed it when it sent one (a cancel of a finished job)."""

    @property
    def job(self) -> Any:
        from emoe_gate.types import Job

        data = self.body.get("job") if isinstance(self.body, dict) else None
        return Job.model_validate(data) if data is not None else None


class ValidationError(APIError):
    """422: a field of the request is not valid; `field` names it."""


class RateLimitError(APIError):
    """429: the queue is full; raised once the client's retries are spent."""


class ServiceUnavailableError(APIError):
    """503: the database or the queue is unavailable; raised once the client's retries are spent."""


STATUS_ERRORS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}

# where a field error's location starts: FastAPI prefixes it with the part of the request
_LOCATIONS = ("body", "query", "path", "header", "cookie")


def field_name(loc: list[Any]) -> str | None:
    """`["body", "labels", "region"]` -> `"labels.region"`; `["header", "Idempotency-Key"]` -> that header."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or None


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error response, with the server's message and field."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    message, field, errors = response.reason_phrase or "error", None, []
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list):
            errors = [e for e in detail if isinstance(e, dict)]
            if errors:
                field = field_name(list(errors[0].get("loc") or []))
                message = str(errors[0].get("msg") or message)
        elif isinstance(detail, str):
            message = detail
        elif isinstance(body.get("error"), dict):  # the OpenAI-compatible endpoint's shape
            message = str(body["error"].get("message") or message)
            field = body["error"].get("param")
    elif isinstance(body, str) and body:
        message = body[:500]
    kind = STATUS_ERRORS.get(response.status_code, APIError)
    return kind(response.status_code, message, field=field, errors=errors, body=body, response=response)
