"""`POST /v1/images/generations` without workers (jobs stay queued): the answers that do not need a render,
in OpenAI's error shape. The official `openai` package against a real server: tests/client."""

from __future__ import annotations

import pytest

from tests.gateway.helpers import new_key

pytestmark = pytest.mark.postgres
PATH = "/v1/images/generations"


def test_not_finished_within_max_wait_is_202_with_the_job_to_poll(make_client, module_pg_url: str) -> None:
    client = make_client(max_wait_s=0)
    _, auth = new_key(module_pg_url)
    reply = client.post(PATH, json={"prompt": "a red circle", "user": "u1"}, headers=auth)
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["data"] == [] and body["emoe_gate"]["status"] == "queued"
    job = client.get(body["emoe_gate"]["links"]["job"], headers=auth).json()
    assert job["mode"] == "fast" and job["labels"] == {"user": "u1"} and job["status"] == "queued"


def test_errors_are_in_openai_shape(make_client, module_pg_url: str) -> None:
    client = make_client(max_wait_s=0, queue_max_depth=1)
    _, auth = new_key(module_pg_url)
    cases = [
        ({"prompt": "a red circle", "style": "vivid"}, {}, 400, "style"),
        ({"prompt": "a red circle", "colour": "red"}, {}, 400, "colour"),
        ({"n": 1}, {}, 400, "prompt"),
        ({"prompt": "a red circle", "size": "100x100"}, {}, 400, "size"),
        ({"prompt": "a red circle"}, {"Authorization": "Bearer nope"}, 401, None),
    ]
    for body, headers, status, param in cases:
        reply = client.post(PATH, json=body, headers={**auth, **headers})
        assert reply.status_code == status, (body, reply.text)
        error = reply.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["param"] == param, error
    assert (
        "Unrecognized request argument supplied: colour"
        in client.post(PATH, json={"prompt": "a red circle", "colour": "red"}, headers=auth).json()["error"][
            "message"
        ]
    )
    client.post("/v1/jobs", json={"prompt": "fill the queue"}, headers=auth)
    full = client.post(PATH, json={"prompt": "a red circle"}, headers=auth)
    assert full.status_code == 429 and full.headers["Retry-After"]
    assert full.json()["error"]["code"] == "rate_limit_exceeded"
