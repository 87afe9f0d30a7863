"""The OpenAPI document a generator can use, and what it promises: named operation ids, one error schema on
every error response, webhooks matching the bodies sent, `Prefer: wait`, unknown query parameters refused,
absolute URLs, and docs pages that load nothing from outside."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from gateway.errors import Problem
from gateway.openapi import WEBHOOK_EVENTS, WebhookEvent
from tests.gateway.helpers import new_key

pytestmark = pytest.mark.postgres
OK = {"prompt": "a red circle on a white background"}


@pytest.fixture
def spec(make_client) -> dict[str, Any]:
    return make_client().get("/openapi.json").json()


def _operations(spec: dict[str, Any]):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_operation_ids_are_the_endpoint_names(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in _operations(spec)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z_]*", i) for i in ids), ids
    expected = {"submit_job", "get_job", "list_jobs", "cancel_job", "get_image", "score_prompts"}
    assert expected | {"list_reviews", "review_job", "create_image"} <= set(ids)
    assert not any(i.endswith(("_post", "_get")) for i in ids)


def test_every_error_response_has_the_problem_schema(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert "Problem" in schemas and "HTTPValidationError" not in schemas
    checked = 0
    for path, method, op in _operations(spec):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            schema = response["content"]["application/json"]["schema"]
            wanted = "OpenAIErrorBody" if path.startswith("/v1/images/") else "Problem"
            wanted = "Readiness" if path == "/readyz" else wanted
            assert schema == {"$ref": f"#/components/schemas/{wanted}"}, (method, path, status)
            checked += 1
    assert checked > 30


def test_error_bodies_are_problems(make_client, module_pg_url: str) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    for reply in (
        client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth),
        client.post("/v1/jobs", json={"prompt": ""}, headers=auth),
        client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}),
        client.get("/v1/jobs?colour=red", headers=auth),
    ):
        assert reply.status_code >= 400
        Problem.model_validate(reply.json())


def test_webhooks_describe_every_event_and_the_body_sent(spec: dict[str, Any], tmp_path) -> None:
    from audit import jobs as repo
    from audit.chain import append_artifacts, append_decision
    from audit.db import ensure_schema, session_scope
    from audit.models import Artifact
    from policies import DecisionContext, decide
    from tests.audit.factories import FakeScore, make_policy
    from tests.gateway.helpers import make_settings
    from workers import webhooks

    assert set(spec["webhooks"]) == set(WEBHOOK_EVENTS) and set(webhooks.EVENTS) <= set(WEBHOOK_EVENTS)
    for event, item in spec["webhooks"].items():
        body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/WebhookEvent"}, event
        assert set(item["post"]["responses"]) == {"200"}
        headers = {p["name"] for p in item["post"]["parameters"] if p["in"] == "header"}
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= headers
    # the body a worker sends has exactly the fields the document names, at every level
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    ensure_schema(url)
    with session_scope(url) as session:
        job, _ = repo.create_job(
            session,
            tenant="acme",
            prompt="a red circle",
            negative_prompt="",
            mode="fast",
            params={},
            labels={"region": "eu"},
            language="en",
            callback_url="https://example.com/hook",
        )
        policy = make_policy()
        decision = decide(FakeScore(2.5), DecisionContext(language="en"), policy)
        repo.record_decision(job, decision.action)
        append_decision(session, job, FakeScore(2.5), decision)
        artifact = Artifact(
            job_id=job.id,
            path_index=0,
            storage_uri="file:///nowhere/0.png",
            sha256="0" * 64,
            size_bytes=1,
            width=32,
            height=32,
        )
        append_artifacts(session, [artifact])
        job_id = job.id
    public = make_settings(url, tmp_path, public_url="https://gate.example.com")
    _, body, _ = webhooks.payload(job_id, "halted", public)
    sent = WebhookEvent.model_validate_json(body)
    assert sent.job.decision is not None and sent.job.decision.action == "halt"
    import json

    raw = json.loads(body)
    assert set(raw) == set(WebhookEvent.model_fields)
    assert set(raw["job"]) == set(type(sent.job).model_fields)
    assert set(raw["job"]["decision"]) == set(type(sent.job.decision).model_fields)
    assert set(raw["job"]["images"][0]) == set(type(sent.job.images[0]).model_fields)
    assert sent.job.images[0].url == f"https://gate.example.com/v1/jobs/{job_id}/images/0"


def test_prefer_wait_is_documented_and_checked(spec: dict[str, Any], make_client, module_pg_url) -> None:
    for path, method in (("/v1/jobs", "post"), ("/v1/jobs/{job_id}", "get")):
        names = {(p["in"], p["name"]) for p in spec["paths"][path][method]["parameters"]}
        assert {("query", "wait"), ("header", "Prefer")} <= names
    client = make_client()
    _, auth = new_key(module_pg_url)
    reply = client.post("/v1/jobs", json=OK, headers={**auth, "Prefer": "wait=soon"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["header", "Prefer"]
    reply = client.post("/v1/jobs", json=OK, headers={**auth, "Prefer": "respond-async, wait=0"})
    assert reply.status_code == 202  # another preference beside it is not refused


def test_unknown_query_parameters_are_refused(make_client, module_pg_url: str) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    for method, path in (("GET", "/v1/jobs?limit=5&colour=red"), ("POST", "/v1/jobs?wiat=5")):
        reply = client.request(method, path, json=OK if method == "POST" else None, headers=auth)
        assert reply.status_code == 422, reply.text
        locs = [e["loc"] for e in reply.json()["detail"]]
        assert locs == [["query", "colour" if method == "GET" else "wiat"]]
    assert client.get("/v1/jobs?limit=5&status=queued", headers=auth).status_code == 200


def test_links_are_absolute(make_client, module_pg_url: str) -> None:
    _, auth = new_key(module_pg_url)
    job = make_client().post("/v1/jobs", json=OK, headers=auth).json()
    assert job["links"]["self"] == f"http://testserver/v1/jobs/{job['id']}"
    public = make_client(public_url="https://gate.example.com/")
    job = public.post("/v1/jobs", json=OK, headers=auth).json()
    assert job["links"] == {
        "self": f"https://gate.example.com/v1/jobs/{job['id']}",
        "cancel": f"https://gate.example.com/v1/jobs/{job['id']}/cancel",
    }
    assert public.get("/openapi.json").json()["servers"] == [{"url": "https://gate.example.com"}]
    listed = public.get("/v1/jobs", headers=auth).json()["jobs"]
    assert all(j["links"]["self"].startswith("https://gate.example.com/v1/jobs/") for j in listed)


def test_docs_load_nothing_from_outside(make_client) -> None:
    client = make_client()
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert sources and not [s for s in sources if s.startswith(("http:", "https:", "//"))], sources
        assert "http" not in html.headers["content-security-policy"]  # nor does its policy allow it
        for source in sources:
            asset = client.get(source)
            assert asset.status_code == 200 and len(asset.content) > 100, source
    assert "SwaggerUIBundle" in client.get("/docs").text
