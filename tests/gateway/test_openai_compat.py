"""`POST /v1/images/generations` without workers (jobs stay queued): the answers that do not need a render,
in OpenAI's error shape. The official `openai` package against a real server: tests/client."""

from __future__ import annotations

import base64

import pytest

from tests.gateway.helpers import new_key
from tests.workers.conftest import tiny_runtime  # noqa: F401 - the fixture

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


def test_flagged_under_on_flag_release_returns_the_image(tiny_runtime, tmp_path) -> None:  # noqa: F811
    """The tiny ensemble's test policy releases flagged jobs (`on_flag: release`, the default)."""
    from fastapi.testclient import TestClient

    from gateway.app import create_app
    from tests.gateway.helpers import make_settings
    from workers.embedded import InProcessWorker

    policy = tiny_runtime.policy
    assert policy.on_flag == "release"
    flagged = next(p for p, s in tiny_runtime.expected.items() if policy.flag_at < s <= policy.halt_at)
    halted = next(p for p, s in tiny_runtime.expected.items() if s > policy.halt_at)
    url = f"sqlite:///{tmp_path / 'emoe.db'}"
    settings = make_settings(url, tmp_path)
    app = create_app(settings, dispatcher=InProcessWorker(settings, runtime=tiny_runtime))
    with TestClient(app, raise_server_exceptions=False) as client:
        _, auth = new_key(url)
        reply = client.post(PATH, json={"prompt": flagged, "response_format": "b64_json"}, headers=auth)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["emoe_gate"]["flagged"] is True and body["emoe_gate"]["action"] == "flag"
        assert base64.b64decode(body["data"][0]["b64_json"]).startswith(b"\x89PNG")
        refused = client.post(PATH, json={"prompt": halted}, headers=auth)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "content_policy_violation"
