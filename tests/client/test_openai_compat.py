"""`POST /v1/images/generations` with the official `openai` package pointed at a real `emoe-gate serve`
(embedded, reference ensemble, bundled policy): the jobs it makes are ordinary jobs."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from emoe_gate import Client
from tests.client.conftest import ACCEPTED, FLAGGED, HALTED, Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=120)


def test_accepted_prompt_returns_an_image(oai: openai.OpenAI, server: Server) -> None:
    reply = oai.images.generate(prompt=ACCEPTED, response_format="b64_json", user="end-user-7")
    png = base64.b64decode(reply.data[0].b64_json)
    assert png.startswith(PNG_MAGIC)
    job_id = reply.model_extra["emoe_gate"]["job_id"]
    with Client(server.url, api_key=server.key) as client:  # an ordinary job: status, decision, label
        job = client.get(job_id)
        assert job.status == "completed" and job.decision.action == "continue"
        assert job.labels == {"user": "end-user-7"} and job.mode == "fast"
        assert client.image(job, 0) == png


def test_url_format_is_absolute_and_serves_the_image(oai: openai.OpenAI, server: Server) -> None:
    reply = oai.images.generate(prompt=ACCEPTED, size="auto")
    url = reply.data[0].url
    assert url.startswith(server.url + "/v1/jobs/") and url.endswith("/images/0")
    image = httpx.get(url, headers={"Authorization": f"Bearer {server.key}"})
    assert image.status_code == 200 and image.content.startswith(PNG_MAGIC)


def test_halted_prompt_is_a_content_policy_violation(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.images.generate(prompt=HALTED, response_format="b64_json")
    error = caught.value
    assert error.status_code == 400 and error.code == "content_policy_violation" and error.param == "prompt"
    body = error.body
    assert body["action"] == "halt" and body["status"] == "halted"
    assert body["score"] > 0 and body["policy"].startswith("default@")
    assert "halt_at" in body["message"] and "halt_at" in body["reason"]


def test_flagged_prompt_is_held_and_not_returned(oai: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        oai.images.generate(prompt=FLAGGED, response_format="b64_json")
    error = caught.value
    assert error.code == "held_for_review" and "held for human review" in error.message
    assert error.body["status"] == "held" and error.body["flagged"] is True
    with Client(server.url, api_key=server.review_key) as reviewer:
        assert error.body["job_id"] in [str(i.job.id) for i in reviewer.reviews().items]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"size": "1x1"}, "size"),
        ({"size": "huge"}, "size"),
        ({"size": "4096x4096"}, "size"),
        ({"response_format": "jpeg"}, "response_format"),
        ({"quality": "hd"}, "quality"),
        ({"extra_body": {"seed": 3}}, "seed"),
        ({"prompt": "   "}, "prompt"),
    ],
)
def test_unsupported_values_name_the_param(oai: openai.OpenAI, fields: dict, param: str) -> None:
    fields = {"prompt": ACCEPTED, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        oai.images.generate(**fields)
    assert caught.value.param == param and caught.value.body["type"] == "invalid_request_error"


def test_bad_key_is_an_authentication_error(server: Server) -> None:
    stranger = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.images.generate(prompt=ACCEPTED)
    assert caught.value.code == "invalid_api_key"
