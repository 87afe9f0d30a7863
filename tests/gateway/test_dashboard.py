"""`/dashboard` over a real PostgreSQL database: sign-in, tenant scope, pages, filters, images."""

from __future__ import annotations

import hashlib
import io
import re
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from audit.db import get_engine, session_scope
from audit.models import ReplayRun
from tests.audit.report_seed import seed
from tests.gateway.helpers import make_settings, new_key

pytestmark = pytest.mark.postgres


def seed_tenant(url: str, tenant: str, tmp_path) -> str:
    """Decisions of `tenant` (and one of another tenant); returns the job id that has an image."""
    png = tmp_path / "artifacts" / f"{tenant}.png"  # inside the artifacts folder: images are served from it
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(png)
    digest = hashlib.sha256(png.read_bytes()).hexdigest()
    rows = []
    for i in range(12):
        rows.append(
            {"tenant": tenant, "language": "en" if i % 3 else "fi", "score": 0.1 * i,
             "action": "halt" if i >= 9 else "flag" if i >= 7 else "continue",
             "prompt": f"prompt {i}", "policy_version": "2" if i % 2 else "1", "rule": f"rule-{i}",
             "minutes": i * 90}
        )  # fmt: skip
    rows.append(
        {"tenant": tenant, "language": "en", "score": 0.05, "action": "continue", "prompt": "with image",
         "storage_uri": f"file://{png}", "sha256": digest, "quality": 30.5, "minutes": 2000}
    )  # fmt: skip
    rows.append(
        {"tenant": "someone-else", "language": "de", "score": 9.0, "action": "halt", "prompt": "secret"}
    )
    seed(get_engine(url), rows)
    with session_scope(url) as session:
        from audit.models import Job

        job = session.query(Job).filter(Job.prompt == "with image", Job.tenant == tenant).one()
        mine = {"total": 13, "replayed": 13, "changed": 2, "before": {"halt": 3}, "after": {"halt": 4}}
        theirs = {"total": 1, "replayed": 1, "changed": 1, "before": {"halt": 1}, "after": {"halt": 777}}
        session.add(ReplayRun(policy_name="default", policy_version="3", policy_hash="h" * 64,
                              summary={"total": 14, "changed": 3, "after": {"halt": 781},
                                       "tenants": {tenant: mine, "someone-else": theirs}}))  # fmt: skip
        return str(job.id)


@pytest.fixture
def client(module_pg_url: str, tmp_path):
    from gateway.app import create_app
    from gateway.dashboard import router

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "name: dash\nversion: '7'\nfingerprint: " + "f" * 64 + "\nmode: enforce\nflag_at: 0.5\nhalt_at: 0.8\n"
    )
    settings = make_settings(module_pg_url, tmp_path, policy_path=policy)
    app = create_app(settings, start_workers=False, extra_routers=[] if _included() else [router])
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


def _included() -> bool:
    from gateway import app as app_module

    return "gateway.dashboard" in app_module.EXTRA_ROUTER_MODULES


def test_pages_need_a_read_key(client: TestClient, module_pg_url: str) -> None:
    r = client.get("/dashboard/jobs?action=halt", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login?next=")
    assert client.get("/dashboard/login").status_code == 200
    r = client.post("/dashboard/login", content="key=emg_wrong&next=/dashboard", follow_redirects=False,
                    headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 303 and "error=invalid" in r.headers["location"]
    assert "That key is not valid." in client.get(r.headers["location"]).text
    _, headers = new_key(module_pg_url, role="read")
    secret = headers["Authorization"].removeprefix("Bearer ")
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = f"key={secret}&next=https://evil.example/"
    r = client.post("/dashboard/login", content=body, follow_redirects=False, headers=form)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"  # no open redirect
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert "Max-Age=28800" in cookie and "Secure" not in cookie  # no https public URL is configured
    assert secret not in cookie and secret[:12] in cookie_session(cookie)  # a session, not the key
    page = client.get("/dashboard")
    assert page.status_code == 200  # the cookie signs the browser in
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    client.post("/dashboard/logout", data={"csrf": csrf})
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def cookie_session(set_cookie: str) -> str:
    """The JSON payload a session cookie carries (readable, not secret: it is signed, not encrypted)."""
    import base64

    value = set_cookie.split(";")[0].split("=", 1)[1].strip('"')
    payload = value.split(".")[0]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()


def test_overview_fairness_and_jobs_are_scoped_to_the_tenant(
    client: TestClient, module_pg_url: str, tmp_path
) -> None:
    tenant, headers = new_key(module_pg_url, role="read")
    job_id = seed_tenant(module_pg_url, tenant, tmp_path)

    overview = client.get("/dashboard", headers=headers)
    assert overview.status_code == 200
    counts = re.findall(r'<span class="tag (\w+)">\w+</span></td><td>(\d+)</td>', overview.text)
    assert dict(counts) == {"continue": "8", "flag": "2", "halt": "3"}  # not the other tenant's halt
    assert "dash@7#" in overview.text  # the policy in force
    replay = re.search(r'<div id="replay">(.*?)</div>', overview.text, re.S).group(1)
    assert "<td>3 → 4</td>" in replay and "<td>13</td>" in replay  # this tenant's replay totals ...
    assert "777" not in replay and "781" not in replay  # ... neither another tenant's nor everyone's

    fair = client.get("/dashboard/fairness", headers=headers)
    assert fair.status_code == 200
    assert 'data-group="en"' in fair.text and 'data-group="fi"' in fair.text
    assert 'data-group="de"' not in fair.text
    assert "too few" in fair.text  # fi has 4 decisions
    assert client.get("/dashboard/fairness?since=someday", headers=headers).status_code == 422

    jobs = client.get("/dashboard/jobs?action=halt", headers=headers)
    actions = re.findall(r'class="job" data-action="(\w+)"', jobs.text)
    assert actions == ["halt", "halt", "halt"]
    assert "secret" not in jobs.text
    by_lang = client.get("/dashboard/jobs?language=fi&policy_version=1", headers=headers)
    assert re.findall(r'data-language="(\w+)"', by_lang.text) == ["fi", "fi"]  # i = 0, 6
    assert client.get("/dashboard/jobs?action=explode", headers=headers).status_code == 422

    page = client.get(f"/dashboard/jobs/{job_id}", headers=headers)
    assert page.status_code == 200 and "with image" in page.text and "clip_score" in page.text
    img = client.get(f"/dashboard/jobs/{job_id}/images/0", headers=headers)
    assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).size == (8, 8)
    assert client.get(f"/dashboard/jobs/{uuid.uuid4()}", headers=headers).status_code == 404


def test_other_tenants_jobs_are_not_found(client: TestClient, module_pg_url: str, tmp_path) -> None:
    tenant, _ = new_key(module_pg_url, role="read")
    job_id = seed_tenant(module_pg_url, tenant, tmp_path)
    _, other = new_key(module_pg_url, role="read")
    assert client.get(f"/dashboard/jobs/{job_id}", headers=other).status_code == 404
    assert client.get(f"/dashboard/jobs/{job_id}/images/0", headers=other).status_code == 404


def test_jobs_paginate_by_keyset(client: TestClient, module_pg_url: str) -> None:
    tenant, headers = new_key(module_pg_url, role="read")
    seed(get_engine(module_pg_url), [{"tenant": tenant, "language": "en", "score": i, "action": "continue",
                                      "prompt": f"p{i}"} for i in range(60)])  # fmt: skip
    first = client.get("/dashboard/jobs", headers=headers)
    assert first.text.count('class="job"') == 50
    older = re.search(r'href="(/dashboard/jobs\?before=\d+)" id="older"', first.text).group(1)
    second = client.get(older, headers=headers)
    assert second.text.count('class="job"') == 10 and 'id="older"' not in second.text
