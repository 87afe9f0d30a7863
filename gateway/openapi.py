"""The OpenAPI document as client generators need it, and the docs pages served offline.

- operation ids are the endpoint functions' names (`submit_job`, `get_job`, ...), not generated ones;
- every error response has a schema: `gateway.errors.Problem` (the OpenAI-compatible path: OpenAI's shape);
- `webhooks` describes the body and headers of every event a job's `callback_url` receives;
- operations that take `?wait=` also document `Prefer: wait=N` (RFC 7240), which means the same;
- unknown query parameters are refused (422 naming the parameter), as unknown body fields are;
- `/docs` (Swagger UI) and `/redoc` load their scripts from the gateway itself (the `fastapi-offline` wheel's
  copies of Swagger UI and ReDoc), so they work without the internet.
"""

from __future__ import annotations

import copy
import json
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from gateway.errors import OPENAI_PATHS, FieldError, Problem
from gateway.schemas import Action, Mode

DOCS_STATIC = "/docs/static"
WEBHOOK_EVENTS = (
    "halted",
    "flagged",
    "held",
    "completed",
    "failed",
    "review.approved",
    "review.rejected",
    "review.escalated",
)
EVENT_MEANING = {
    "halted": "The gate halted the prompt (nothing is rendered unless a reviewer approves it).",
    "flagged": "The gate flagged the prompt; under `on_flag: release` it is rendered, under `hold` held.",
    "held": "A flagged job was rendered and waits for human review; its images are not served until then.",
    "completed": "The job finished; its images can be fetched.",
    "failed": "The job failed after its retries; `error` says why.",
    "review.approved": "A reviewer approved the job: its images are released (a halted job is rendered).",
    "review.rejected": "A reviewer rejected the job: its images are never served.",
    "review.escalated": "A reviewer escalated the job; it stays in the review queue.",
}


class Readiness(BaseModel):
    """`/readyz`: 200 when ready, 503 (with the same body) when something it needs is not."""

    ready: bool
    checks: dict[str, Any] = Field(description="database, broker: ok or why not; workers_ready: a count.")


def operation_id(route: APIRoute) -> str:
    """The endpoint function's name: `submit_job`, `get_job`, `create_image`, ..."""
    return route.name


# --- webhooks -----------------------------------------------------------------------------------------------


class WebhookDecision(BaseModel):
    action: Action
    shadow_action: Action | None
    rule: str
    score: float
    flag_at: float
    halt_at: float
    policy_name: str
    policy_version: str
    policy_hash: str
    row_hash: str


class WebhookImage(BaseModel):
    index: int
    url: str = Field(
        description="The image's URL: under `EMOE_PUBLIC_URL` when it is set, else its path on the gateway "
        "(`/v1/jobs/{id}/images/{index}`)."
    )
    sha256: str


class WebhookJob(BaseModel):
    id: str
    status: str
    mode: Mode
    language: str | None
    labels: dict[str, str]
    error: str | None
    decision: WebhookDecision | None
    images: list[WebhookImage]


class WebhookEvent(BaseModel):
    """The JSON body of every webhook (what `GET /v1/jobs/{id}` shows, in brief)."""

    event: str = Field(description="The event: " + ", ".join(WEBHOOK_EVENTS) + ".")
    delivery_id: str = Field(description="`<job id>:<event>`, the same on every attempt (also `webhook-id`).")
    job: WebhookJob


def _webhook(app: FastAPI, event: str) -> None:
    def receive(
        body: WebhookEvent,
        webhook_id: Annotated[str, Header(alias="webhook-id", description="`<job id>:<event>`.")],
        webhook_timestamp: Annotated[str, Header(alias="webhook-timestamp", description="Unix seconds.")],
        webhook_signature: Annotated[
            str,
            Header(
                alias="webhook-signature",
                description="`v1,<base64 HMAC-SHA256 of <id>.<timestamp>.<body>>` under the tenant's "
                "secret (Standard Webhooks; two, space-separated, while the operator rotates secrets).",
            ),
        ],
        x_emoe_event: Annotated[str, Header(alias="X-Emoe-Event", description="The event.")],
    ) -> None:
        """Answer 2xx; anything else is retried with backoff up to `webhook_max_attempts`."""

    receive.__name__ = "on_" + event.replace(".", "_")
    app.webhooks.post(
        event,
        summary=EVENT_MEANING[event],
        description=f"Sent to the job's `callback_url` with `event: {event}`. " + EVENT_MEANING[event],
        response_description="Received (any 2xx).",
    )(receive)


# --- the document -------------------------------------------------------------------------------------------


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": r"^\s*wait=\d+(\.\d+)?\s*$"},
    "description": "`wait=N` (RFC 7240): the same as `?wait=N` (used when `wait` is not given).",
}


def improve(spec: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document with a Problem schema on every error response and `Prefer` beside `?wait=`."""
    spec = copy.deepcopy(spec)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (FieldError, Problem, Readiness):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schema.pop("$defs", None)
        schemas[model.__name__] = schema
    items = [*spec.get("paths", {}).items(), *spec.get("webhooks", {}).items()]
    for path, item in items:
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if path.startswith(OPENAI_PATHS):  # OpenAI's shape, and 400 (not 422) for a bad request
                operation["responses"].pop("422", None)
            if path == "/readyz":  # its 503 is the readiness report, not a problem
                for response in operation["responses"].values():
                    response["content"] = {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}
                    }
            for status, response in operation["responses"].items():
                for media, body in response.get("content", {}).items():
                    if media.startswith("image/") and not body.get("schema"):
                        body["schema"] = {"type": "string", "format": "binary"}
                if status.isdigit() and int(status) >= 400:
                    content = response.setdefault("content", {})
                    schema = content.get("application/json", {}).get("schema", {})
                    if not schema or schema.get("$ref", "").endswith("/HTTPValidationError"):
                        content["application/json"] = {"schema": dict(PROBLEM_REF)}
            params = operation.get("parameters", [])
            if any(p.get("name") == "wait" and p.get("in") == "query" for p in params):
                params.append(dict(PREFER))
    for item in spec.get("webhooks", {}).values():  # the receiver answers these, not the gateway
        for operation in item.values():
            operation.get("responses", {}).pop("422", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if '/schemas/HTTPValidationError"' in json.dumps(spec):  # pragma: no cover - a route FastAPI documents
        raise RuntimeError("a response still refers to HTTPValidationError")
    return spec


# --- unknown query parameters -------------------------------------------------------------------------------


_declared: dict[int, frozenset[str]] = {}


def _declared_query(route: APIRoute) -> frozenset[str]:
    """The query parameters the route (with its dependencies) declares, by their names in the URL."""
    names = _declared.get(id(route))
    if names is None:
        found: set[str] = set()
        pending = [route.dependant]
        while pending:
            dependant = pending.pop()
            found.update(p.alias for p in dependant.query_params)
            pending.extend(dependant.dependencies)
        names = _declared[id(route)] = frozenset(found)
    return names


async def refuse_unknown_query(request: Request) -> None:
    """422 naming a query parameter that the API operation does not take (`/v1/...` only)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.url.path.startswith("/v1/") or not request.query_params:
        return
    known = _declared_query(route)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"unknown query parameter (known: {allowed})",
                    "type": "extra_forbidden",
                }
                for name in unknown
            ]
        )


# --- install ------------------------------------------------------------------------------------------------


def install_openapi(app: FastAPI) -> None:
    """The document above, the webhooks, and `/docs` and `/redoc` served from the gateway's own files.
    The app must be made with `docs_url=None, redoc_url=None`."""
    for event in WEBHOOK_EVENTS:
        _webhook(app, event)

    plain = app.openapi  # FastAPI's own: cached, rebuilt when the routes change
    improved: dict[int, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        spec = plain()
        if id(spec) not in improved:
            improved.clear()
            improved[id(spec)] = better = improve(spec)
            public_url = getattr(getattr(app.state, "settings", None), "public_url", None)
            if public_url:  # generated clients default to it
                better["servers"] = [{"url": public_url}]
        return improved[id(spec)]

    app.openapi = openapi  # type: ignore[method-assign]
    static = files("fastapi_offline") / "static"
    app.mount(DOCS_STATIC, StaticFiles(directory=str(static)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )
