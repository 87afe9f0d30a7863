"""The HTTP API without workers (jobs stay queued): validation, auth, tenants, idempotency, backpressure."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select

from audit.db import session_scope
from audit.models import Job
from tests.gateway.helpers import METRICS_AUTH, new_key

pytestmark = pytest.mark.postgres

OK = {"prompt": "a red circle on a white background"}


def jobs_of(url: str, tenant: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant))


# --- the bad-input table: every row is a 4xx naming the field, and no row is written ------------------------

JSON_ROWS = [
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("whitespace prompt", {"prompt": "  \t\n "}, "prompt"),
    ("prompt over the limit", {"prompt": "x" * 1001}, "prompt"),
    ("NUL byte in prompt", {"prompt": "a red\x00circle"}, "prompt"),
    ("NUL byte in negative prompt", {**OK, "negative_prompt": "blur\x00"}, "negative_prompt"),
    ("invisible prompt", {"prompt": "\u200b \u200d\u202e\u2066\ufeff\u3000"}, "prompt"),
    ("control character in prompt", {"prompt": "a red\x07 circle"}, "prompt"),
    ("escape sequence in prompt", {"prompt": "a \x1b[2Jred circle"}, "prompt"),
    ("control character in a label", {**OK, "labels": {"region": "eu\x1b"}}, "labels"),
    ("control character in negative prompt", {**OK, "negative_prompt": "blur\x7f"}, "negative_prompt"),
    ("missing prompt", {"seed": 1}, "prompt"),
    ("prompt of wrong type", {"prompt": 5}, "prompt"),
    ("steps of wrong type", {**OK, "steps": "5"}, "steps"),
    ("seed as a bool", {**OK, "seed": True}, "seed"),
    ("negative seed", {**OK, "seed": -1}, "seed"),
    ("zero steps", {**OK, "steps": 0}, "steps"),
    ("guidance out of range", {**OK, "guidance": 1000.0}, "guidance"),
    ("height not a multiple of 8", {**OK, "height": 100}, "height"),
    ("height above the server's limit", {**OK, "height": 2048}, "height"),
    ("width too small", {**OK, "width": 8}, "width"),
    ("unknown mode", {**OK, "mode": "slow"}, "mode"),
    ("unknown field", {**OK, "colour": "red"}, "colour"),
    ("callback not http", {**OK, "callback_url": "ftp://example.com/x"}, "callback_url"),
    ("label value not a string", {**OK, "labels": {"region": 3}}, "labels"),
]
RAW_ROWS = [
    ("invalid JSON", b'{"prompt": "a red circle"', "body"),
    ("NaN guidance", b'{"prompt": "a red circle", "guidance": NaN}', "guidance"),
    ("infinite guidance", b'{"prompt": "a red circle", "guidance": Infinity}', "guidance"),
    ("overflowing guidance", b'{"prompt": "a red circle", "guidance": 1e999}', "guidance"),
    ("a list, not an object", b'["a red circle"]', "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), JSON_ROWS, ids=[r[0] for r in JSON_ROWS])
def test_bad_json_input_names_the_field(make_client, module_pg_url, case, body, field) -> None:
    client = make_client()
    tenant, auth = new_key(module_pg_url)
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422, (case, response.text)
    locs = [e["loc"] for e in response.json()["detail"]]
    assert any(field in loc for loc in locs), (case, locs)
    assert jobs_of(module_pg_url, tenant) == 0


@pytest.mark.parametrize(("case", "raw", "field"), RAW_ROWS, ids=[r[0] for r in RAW_ROWS])
def test_bad_raw_input_names_the_field(make_client, module_pg_url, case, raw, field) -> None:
    client = make_client()
    tenant, auth = new_key(module_pg_url)
    response = client.post("/v1/jobs", content=raw, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 422, (case, response.text)
    locs = [e["loc"] for e in response.json()["detail"]]
    assert any(field in loc for loc in locs), (case, locs)
    assert jobs_of(module_pg_url, tenant) == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("limit=0", "limit"),
        ("cursor=!!", "cursor"),
        ("cursor=Zm9v", "cursor"),
        ("since=2026-01-01T00:00:00", "since"),
        ("language=english", "language"),
        ("action=stop", "action"),
    ],
)
def test_bad_list_query_names_the_parameter(make_client, module_pg_url, query, field) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    response = client.get(f"/v1/jobs?{query}", headers=auth)
    assert response.status_code == 422, response.text
    assert any(field in e["loc"] for e in response.json()["detail"])


def test_bad_wait_and_idempotency_key(make_client, module_pg_url) -> None:
    client = make_client()
    tenant, auth = new_key(module_pg_url)
    for wait in ("-1", "nan", "inf"):
        response = client.post(f"/v1/jobs?wait={wait}", json=OK, headers=auth)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "wait"
    response = client.post("/v1/jobs", json=OK, headers={**auth, "Idempotency-Key": "k" * 300})
    assert response.status_code == 422 and "Idempotency-Key" in response.json()["detail"][0]["loc"]
    assert jobs_of(module_pg_url, tenant) == 0


def test_score_rejects_too_many_and_blank_prompts(make_client, module_pg_url) -> None:
    client = make_client(score_max_prompts=3)
    tenant, auth = new_key(module_pg_url)
    response = client.post("/v1/score", json={"prompts": ["a", "b", "c", "d"]}, headers=auth)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "prompts"]
    response = client.post("/v1/score", json={"prompts": ["a", " "]}, headers=auth)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][:3] == ["body", "prompts", 1]
    assert jobs_of(module_pg_url, tenant) == 0


# --- accepted submissions -----------------------------------------------------------------------------------


def test_submit_returns_202_with_links_and_no_language_yet(make_client, module_pg_url) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    body = {"prompt": "un círculo rojo sobre un fondo blanco", "labels": {"region": "eu"}, "mode": "full"}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.text
    job = response.json()
    # the language is detected by the gate stage, off the request path: a queued job has none yet
    assert job["status"] == "queued" and job["language"] is None and job["labels"] == {"region": "eu"}
    assert response.headers["Location"] == job["links"]["self"] == f"http://testserver/v1/jobs/{job['id']}"
    again = client.get(job["links"]["self"], headers=auth).json()
    assert again["id"] == job["id"] and again["mode"] == "full"


def test_wait_returns_202_when_the_job_is_not_done(make_client, module_pg_url) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    response = client.post("/v1/jobs?wait=0.3", json=OK, headers=auth)
    assert response.status_code == 202 and response.json()["status"] == "queued"


# --- auth and tenants ---------------------------------------------------------------------------------------


def test_keys_are_required_and_roles_enforced(make_client, module_pg_url) -> None:
    client = make_client()
    assert client.post("/v1/jobs", json=OK).status_code == 401
    assert client.post("/v1/jobs", json=OK, headers={"Authorization": "Bearer emg_nope"}).status_code == 401
    assert client.get("/v1/jobs", headers={"X-API-Key": "emg_nope"}).status_code == 401
    tenant, writer = new_key(module_pg_url)
    _, reader = new_key(module_pg_url, tenant=tenant, role="read")
    job = client.post("/v1/jobs", json=OK, headers=writer).json()
    assert client.post("/v1/jobs", json=OK, headers=reader).status_code == 403
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=reader).status_code == 403
    assert client.get(f"/v1/jobs/{job['id']}", headers=reader).status_code == 200
    x_api_key = {"X-API-Key": reader["Authorization"].removeprefix("Bearer ")}
    assert client.get("/v1/jobs", headers=x_api_key).json()["jobs"][0]["id"] == job["id"]


def test_a_tenant_never_sees_another_tenants_jobs(make_client, module_pg_url) -> None:
    client = make_client()
    _, alice = new_key(module_pg_url)
    _, bob = new_key(module_pg_url)
    job = client.post("/v1/jobs", json=OK, headers=alice).json()
    for method, path in [
        ("get", f"/v1/jobs/{job['id']}"),
        ("post", f"/v1/jobs/{job['id']}/cancel"),
        ("get", f"/v1/jobs/{job['id']}/images/0"),
    ]:
        response = getattr(client, method)(path, headers=bob)
        assert response.status_code == 404, (path, response.status_code)
    assert client.get("/v1/jobs", headers=bob).json()["jobs"] == []
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=alice).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["status"] == "queued"


# --- idempotency --------------------------------------------------------------------------------------------


def test_duplicate_idempotency_key_returns_the_first_job(make_client, module_pg_url) -> None:
    client = make_client()
    tenant, auth = new_key(module_pg_url)
    headers = {**auth, "Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json=OK, headers=headers)
    second = client.post("/v1/jobs", json=OK, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"] and second.headers["Idempotent-Replayed"] == "true"
    conflict = client.post("/v1/jobs", json={"prompt": "something else"}, headers=headers)
    assert conflict.status_code == 409
    _, other = new_key(module_pg_url)
    assert (
        client.post("/v1/jobs", json=OK, headers={**other, "Idempotency-Key": "order-42"}).json()["id"]
        != (first.json()["id"])
    )
    assert jobs_of(module_pg_url, tenant) == 1


def test_concurrent_duplicates_make_one_job(make_client, module_pg_url) -> None:
    client = make_client()
    tenant, auth = new_key(module_pg_url)
    headers = {**auth, "Idempotency-Key": "race"}
    ids: list[str] = []
    barrier = threading.Barrier(6)

    def submit() -> None:
        barrier.wait()
        response = client.post("/v1/jobs", json=OK, headers=headers)
        assert response.status_code in (200, 202), response.text
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 6 and len(set(ids)) == 1
    assert jobs_of(module_pg_url, tenant) == 1


# --- backpressure, cancel, listing, operations --------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after(make_client, module_pg_url) -> None:
    from audit.jobs import queue_depth

    with session_scope(module_pg_url) as session:
        depth = queue_depth(session)
    client = make_client(queue_max_depth=depth + 2)
    tenant, auth = new_key(module_pg_url)
    assert client.post("/v1/jobs", json=OK, headers=auth).status_code == 202
    assert client.post("/v1/jobs", json=OK, headers=auth).status_code == 202
    refused = client.post("/v1/jobs", json=OK, headers=auth)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert jobs_of(module_pg_url, tenant) == 2


def test_cancel_is_idempotent_and_refuses_finished_jobs(make_client, module_pg_url) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    job = client.post("/v1/jobs", json=OK, headers=auth).json()
    cancelled = client.post(job["links"]["cancel"], headers=auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.post(job["links"]["cancel"], headers=auth).json()["status"] == "cancelled"
    done = client.post("/v1/jobs", json=OK, headers=auth).json()
    with session_scope(module_pg_url) as session:
        session.get(Job, uuid.UUID(done["id"])).status = "halted"
    refused = client.post(done["links"]["cancel"], headers=auth)
    assert refused.status_code == 409 and refused.json()["job"]["status"] == "halted"


def test_list_filters_and_paginates(make_client, module_pg_url) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    prompts = [
        "a red circle",
        "un cuadrado azul junto a un triángulo",
        "a green star",
        "a black hexagon",
        "two pink hearts",
    ]
    made = [client.post("/v1/jobs", json={"prompt": p}, headers=auth).json()["id"] for p in prompts]
    seen, cursor = [], None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/jobs?{query}", headers=auth).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    # not scored yet (no worker runs here), so no job has a language to filter by
    assert client.get("/v1/jobs?language=es", headers=auth).json()["jobs"] == []
    assert client.get("/v1/jobs?status=halted", headers=auth).json()["jobs"] == []
    assert client.get("/v1/jobs?action=halt", headers=auth).json()["jobs"] == []
    assert len(client.get("/v1/jobs?since=2000-01-01T00:00:00Z", headers=auth).json()["jobs"]) == 5


def test_health_ready_metrics_and_openapi(make_client, module_pg_url) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    client.post("/v1/jobs", json=OK, headers=auth)
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["workers_ready"] == 0  # no worker was started
    metrics = client.get("/metrics", headers=METRICS_AUTH).text
    assert 'emoe_jobs_submitted_total{mode="fast"} 1.0' in metrics
    assert "emoe_queue_depth" in metrics and 'emoe_jobs{status="queued"}' in metrics
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/images/{index}",
        "/v1/score",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(paths)


def test_times_are_utc_and_extreme_filters_are_refused(make_client, module_pg_url) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    job = client.post("/v1/jobs", json=OK, headers=auth).json()
    assert job["created_at"].endswith("Z") or job["created_at"].endswith("+00:00")
    assert client.get("/v1/jobs?until=0001-01-01T00:00:00%2B01:00", headers=auth).status_code == 422
    shifted = client.get("/v1/jobs?since=2000-01-01T05:00:00%2B05:00", headers=auth).json()["jobs"]
    assert [j["id"] for j in shifted] == [job["id"]]


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("cafe\u0301 on the left", "caf\u00e9 on the left"),  # a combining accent is kept, composed (NFC)
        ("\U0001f469\u200d\U0001f469\u200d\U0001f467 family", None),  # an emoji ZWJ sequence is kept as is
        ("\u0645\u0631\u0628\u0639 \u0623\u062d\u0645\u0631\nsecond line\twith a tab", None),  # any script
    ],
)
def test_legitimate_text_is_kept_in_nfc(make_client, module_pg_url, sent: str, stored: str | None) -> None:
    import hashlib

    client = make_client()
    _, auth = new_key(module_pg_url)
    response = client.post("/v1/jobs", json={"prompt": sent}, headers=auth)
    assert response.status_code == 202, response.text
    with session_scope(module_pg_url) as session:
        job = session.get(Job, uuid.UUID(response.json()["id"]))
        assert job.prompt == (stored or sent)
        assert job.prompt_sha256 == hashlib.sha256((stored or sent).encode()).hexdigest()  # hashed in NFC
