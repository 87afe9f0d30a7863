"""A client generated from the served OpenAPI document by a real generator (`openapi-python-client`, run as
its command) submits and fetches a job against a real `emoe-gate serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.client.conftest import ACCEPTED, Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
GENERATOR = Path(sys.executable).parent / "openapi-python-client"
# how a user configures the generator for this API: PNG bodies as files, no formatter run afterwards
CONFIG = "content_type_overrides:\n  image/png: application/octet-stream\npost_hooks: []\n"

USE = textwrap.dedent(
    """
    import json, sys
    from emoe_api import AuthenticatedClient
    from emoe_api.api.jobs import get_image, get_job, submit_job
    from emoe_api.models import JobRequest, JobRequestLabels, Problem

    url, key, prompt = sys.argv[1:4]
    client = AuthenticatedClient(base_url=url, token=key, timeout=120)
    labels = JobRequestLabels.from_dict({"region": "eu"})
    job = submit_job.sync(client=client, body=JobRequest(prompt=prompt, labels=labels), prefer="wait=60")
    fetched = get_job.sync(client=client, job_id=job.id)
    png = get_image.sync_detailed(client=client, job_id=job.id, index=0).content
    bad = submit_job.sync(client=client, body=JobRequest(prompt=prompt, steps=0))
    print(json.dumps({
        "id": str(job.id),
        "fetched": str(fetched.id),
        "status": fetched.status.value,
        "action": fetched.decision.action.value,
        "self": fetched.links["self"],
        "png": png[:8].hex(),
        "problem": type(bad) is Problem,
        "problem_loc": bad.detail[0].loc,
    }))
    """
)


def test_generated_client_submits_and_fetches(server: Server, tmp_path: Path) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    (tmp_path / "config.yaml").write_text(CONFIG)
    generated = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(tmp_path / "openapi.json"),
            "--config",
            str(tmp_path / "config.yaml"),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "emoe_api"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout + generated.stderr
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    used = subprocess.run(
        [sys.executable, "-c", USE, server.url, server.key, ACCEPTED],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert used.returncode == 0, used.stderr[-3000:]
    out = json.loads(used.stdout.strip().splitlines()[-1])
    assert out["fetched"] == out["id"] and out["status"] == "completed" and out["action"] == "continue"
    assert out["self"] == f"{server.url}/v1/jobs/{out['id']}"
    assert bytes.fromhex(out["png"]) == b"\x89PNG\r\n\x1a\n"
    assert out["problem"] and out["problem_loc"] == ["body", "steps"]
