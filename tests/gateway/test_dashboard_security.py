"""The dashboard's sessions, CSRF, sign-in checks and headers, `/metrics` access, and the review page, over a
real PostgreSQL database (issues 11, 12 and 13)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from audit import jobs as repo
from audit.chain import append_artifacts, append_decision
from audit.db import get_engine, session_scope
from audit.keys import revoke_key
from audit.models import ApiKey, Artifact, Job, Review
from policies import DecisionContext, decide, parse_policy
from tests.audit.factories import FINGERPRINT, FakeScore
from tests.audit.report_seed import seed
from tests.gateway.helpers import METRICS_TOKEN, make_settings, new_key

pytestmark = pytest.mark.postgres

FORM = {"content-type": "application/x-www-form-urlencoded"}
HOLD = parse_policy(
    {
        "name": "review",
        "version": "1",
        "fingerprint": FINGERPRINT,
        "flag_at": 1.0,
        "halt_at": 2.0,
        "on_flag": "hold",
        "on_halt": "review",
    }
)


def png_bytes(color: tuple[int, int, int]) -> bytes:
    """A 32x32 PNG, the size of the reference ensemble's images."""
    out = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(out, format="PNG")
    return out.getvalue()


def through_gate(url: str, tmp_path: Path, job_id: uuid.UUID, score: float, policy=HOLD) -> str:
    """Take a queued job through the gate under `policy` (held for review when flagged, with one stored
    32x32 image unless halted); returns its status."""
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        decision = decide(FakeScore(score), DecisionContext(language=job.language), policy)
        repo.record_decision(job, decision.action, on_flag=policy.on_flag, on_halt=policy.on_halt)
        append_decision(session, job, FakeScore(score), decision)
        if job.status == "rendering":
            data = png_bytes((40, 120, 200))
            path = tmp_path / "artifacts" / str(job.id) / "0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            artifact = Artifact(job_id=job.id, path_index=0, storage_uri=f"file://{path}",
                                sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), width=32,
                                height=32)  # fmt: skip
            append_artifacts(session, [artifact])
            repo.complete(job)
        return job.status


def held_job(url: str, tmp_path: Path, tenant: str, score: float = 1.5, **fields: Any) -> uuid.UUID:
    """A job of `tenant` gated under HOLD: flagged (1 <= score < 2) means held with an image."""
    values = {"prompt": f"a prompt scored {score}", "negative_prompt": "", "labels": {}, "language": "en"}
    values.update(fields)
    with session_scope(url) as session:
        job, _ = repo.create_job(session, tenant=tenant, mode="fast", params={}, callback_url=None, **values)
        job_id = job.id
    through_gate(url, tmp_path, job_id, score)
    return job_id


def build(module_pg_url: str, tmp_path: Path, client_host: str = "testclient", **changes: Any) -> TestClient:
    from gateway.app import create_app

    settings = make_settings(module_pg_url, tmp_path, **changes)
    app = create_app(settings, start_workers=False)
    return TestClient(app, raise_server_exceptions=False, client=(client_host, 50000))


@pytest.fixture
def clients(module_pg_url: str, tmp_path: Path):
    opened: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        client = build(module_pg_url, tmp_path, **changes)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def sign_in(client: TestClient, secret: str, **headers: str) -> Any:
    return client.post("/dashboard/login", content=f"key={secret}&next=/dashboard", follow_redirects=False,
                       headers={**FORM, **headers})  # fmt: skip


def secret_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def signed_in(response: Any) -> bool:
    return response.status_code == 200 and 'id="sign-out"' in response.text


# --- sessions ---


def test_the_cookie_is_a_signed_session_that_sign_out_and_revocation_end(
    clients, module_pg_url: str, tmp_path: Path
) -> None:
    client = clients()
    tenant, headers = new_key(module_pg_url, role="read")
    secret = secret_of(headers)
    r = sign_in(client, secret)
    assert r.status_code == 303
    value = client.cookies.get("emoe_dashboard_session")
    payload = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
    assert secret not in value and payload["p"] == secret[:12] and payload["t"] == tenant
    assert payload["r"] == "read" and payload["e"] - time.time() == pytest.approx(8 * 3600, abs=60)
    page = client.get("/dashboard")
    assert signed_in(page)

    # sign-out ends the session itself: a copy of the cookie no longer signs in
    assert (
        client.post(
            "/dashboard/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False
        ).status_code
        == 303
    )
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    with TestClient(client.app) as thief:
        thief.cookies.set("emoe_dashboard_session", value, path="/dashboard")
        r = thief.get("/dashboard", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")

    # revoking the key ends its sessions at once
    assert sign_in(client, secret).status_code == 303
    assert signed_in(client.get("/dashboard"))
    with session_scope(module_pg_url) as session:
        assert revoke_key(session, secret[:12]) == 1
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


@pytest.mark.redis
def test_with_a_broker_every_gateway_process_sees_a_sign_out(clients, module_pg_url: str) -> None:
    """Two gateways of one deployment (two apps on one Redis): a session signed out on one is over on both."""
    broker = {"broker_url": "redis://127.0.0.1:6379/0"}
    one, two = clients(**broker), clients(**broker)
    _, headers = new_key(module_pg_url, role="read")
    assert sign_in(one, secret_of(headers)).status_code == 303
    value = one.cookies.get("emoe_dashboard_session")
    two.cookies.set("emoe_dashboard_session", value, path="/dashboard")
    assert signed_in(two.get("/dashboard"))  # the same signing key: either gateway reads the session
    page = one.get("/dashboard")
    assert one.post("/dashboard/logout", data={"csrf": csrf_of(page.text)}).status_code == 200
    assert two.get("/dashboard", follow_redirects=False).status_code == 303


def test_a_session_store_that_is_down_is_a_503(clients, module_pg_url: str) -> None:
    client = clients(broker_url="redis://127.0.0.1:1/0")  # nothing listens there
    _, headers = new_key(module_pg_url, role="read")
    r = sign_in(client, secret_of(headers))
    assert r.status_code == 503 and r.headers["retry-after"]


def test_a_forged_expired_or_rebound_session_does_not_sign_in(
    clients, module_pg_url: str, tmp_path: Path
) -> None:
    from gateway.auth import SessionSigner

    client = clients()
    _, headers = new_key(module_pg_url, role="read")
    secret = secret_of(headers)
    assert sign_in(client, secret).status_code == 303
    value = client.cookies.get("emoe_dashboard_session")
    encoded, mac = value.split(".")
    payload = json.loads(base64.urlsafe_b64decode(encoded + "=="))
    forged = base64.urlsafe_b64encode(json.dumps({**payload, "r": "review"}).encode()).decode().rstrip("=")
    for bad in (f"{forged}.{mac}", f"{encoded}.{mac[:-2]}AA", "garbage", ""):
        other = clients()
        other.cookies.set("emoe_dashboard_session", bad, path="/dashboard")
        assert other.get("/dashboard", follow_redirects=False).status_code == 303, bad

    settings = make_settings(module_pg_url, tmp_path)
    with session_scope(module_pg_url) as session:
        row = session.scalars(sa.select(ApiKey).where(ApiKey.key_prefix == secret[:12])).one()
        expired, _ = SessionSigner.for_settings(settings).issue(row, 60, now=time.time() - 120)
        fresh, _ = SessionSigner.for_settings(settings).issue(row, 60)
    for cookie, ok in ((expired, False), (fresh, True)):
        other = clients()
        other.cookies.set("emoe_dashboard_session", cookie, path="/dashboard")
        assert (other.get("/dashboard", follow_redirects=False).status_code == 200) is ok
    with session_scope(module_pg_url) as session:  # the key's role changes: its sessions end
        session.execute(sa.update(ApiKey).where(ApiKey.key_prefix == secret[:12]).values(role="submit"))
    other = clients()
    other.cookies.set("emoe_dashboard_session", fresh, path="/dashboard")
    assert other.get("/dashboard", follow_redirects=False).status_code == 303


def test_the_cookie_is_secure_behind_an_https_public_url(clients, module_pg_url: str) -> None:
    client = clients(public_url="https://gate.example.com/", dashboard_session_s=600)
    _, headers = new_key(module_pg_url, role="read")
    r = sign_in(client, secret_of(headers), origin="https://gate.example.com")
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "Secure" in cookie and "Max-Age=600" in cookie and "HttpOnly" in cookie
    # the public URL's origin is the one accepted: the plain-http origin of the proxied request is not
    assert sign_in(client, secret_of(headers), origin="http://testserver").status_code == 403


# --- sign-in ---


def test_sign_in_refuses_forms_from_other_origins(clients, module_pg_url: str) -> None:
    client = clients()
    _, headers = new_key(module_pg_url, role="read")
    secret = secret_of(headers)
    others = [{"origin": "https://evil.example"}, {"origin": "null"}, {"referer": "https://evil.example/page"},
              {"origin": "http://testserver.evil.example"}]  # fmt: skip
    for sent in others:
        r = sign_in(client, secret, **sent)
        assert r.status_code == 403 and "set-cookie" not in r.headers, sent
        assert "not posted from this site" in r.text
    assert sign_in(client, secret, origin="http://testserver").status_code == 303
    assert sign_in(client, secret, referer="http://testserver/dashboard/login").status_code == 303


def test_sign_in_shows_only_known_messages(clients) -> None:
    client = clients()
    page = client.get("/dashboard/login", params={"error": "<script>alert('x')</script> Call +1-555 now"})
    assert page.status_code == 200 and "alert" not in page.text and "555" not in page.text
    assert 'id="login-error"' not in page.text
    page = client.get("/dashboard/login", params={"error": "invalid"})
    assert '<p class="warn" id="login-error">That key is not valid.</p>' in page.text


def test_failed_sign_ins_slow_down_then_are_refused_per_client_and_key_prefix(
    module_pg_url: str, tmp_path: Path, caplog
) -> None:
    _, headers = new_key(module_pg_url, role="read")
    secret = secret_of(headers)
    wrong = secret[:12] + "x" * (len(secret) - 12)  # the right prefix, a wrong key
    limits = {"login_max_failures": 2, "login_window_s": 300}
    caplog.set_level(logging.INFO, logger="gateway.dashboard")
    with build(module_pg_url, tmp_path, "10.0.0.1", **limits) as a:
        waits = []
        for _ in range(4):
            start = time.monotonic()
            r = sign_in(a, "emg_guess" + uuid.uuid4().hex)
            waits.append(time.monotonic() - start)
            assert r.status_code == 303 and "error=invalid" in r.headers["location"]
        assert waits[2] >= 0.25 and waits[3] >= 0.5  # after 2 failures each one waits longer
        r = sign_in(a, secret)  # even the right key: this client is refused for the rest of the window
        assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 300
        assert "Too many failed sign-ins" in r.text

        # another client is served at once (the same app: counts are per client)
        a_app = a.app
    with TestClient(a_app, client=("10.0.0.2", 50000)) as b:
        assert sign_in(b, secret).status_code == 303
        # guesses at one key's prefix from many addresses are counted on the prefix too
        for n in range(4):
            with TestClient(a_app, client=(f"10.0.1.{n}", 50000)) as c:
                assert sign_in(c, wrong).status_code == 303
    with TestClient(a_app, client=("10.0.0.3", 50000)) as d:
        assert sign_in(d, secret).status_code == 429
    failures = [r.getMessage() for r in caplog.records if "sign-in failed" in r.getMessage()
                or "sign-in refused" in r.getMessage()]  # fmt: skip
    assert any("failed" in m for m in failures) and any("refused" in m for m in failures)
    assert all(secret not in m and secret[4:12] not in m and "guess" not in m for m in failures)


# --- CSRF and headers ---


def test_every_dashboard_post_needs_the_session_csrf_token(
    clients, module_pg_url: str, tmp_path: Path
) -> None:
    client = clients()
    tenant, headers = new_key(module_pg_url, role="review")
    job_id = held_job(module_pg_url, tmp_path, tenant)
    assert sign_in(client, secret_of(headers)).status_code == 303
    page = client.get("/dashboard/review")
    assert page.status_code == 200
    token = csrf_of(page.text)
    url = f"/dashboard/review/{job_id}"
    for form, extra in (
        ({}, {}),
        ({"csrf": "x" * 43}, {}),
        ({"csrf": token}, {"origin": "https://evil.example"}),
    ):
        r = client.post(url, data={"verdict": "reject", **form}, headers=extra, follow_redirects=False)
        assert r.status_code == 403, form
    assert client.post("/dashboard/logout", follow_redirects=False).status_code == 403
    with session_scope(module_pg_url) as session:
        assert session.get(Job, job_id).status == "held"  # nothing was decided
    r = client.post(url, data={"verdict": "reject", "csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and "done=rejected" in r.headers["location"]
    # another session's token is not this one's
    other = clients()
    assert sign_in(other, secret_of(headers)).status_code == 303
    assert csrf_of(other.get("/dashboard").text) != token
    # a script that sends its key as a header has no cookie to abuse: no token needed
    second = held_job(module_pg_url, tmp_path, tenant)
    bare = clients()
    r = bare.post(
        f"/dashboard/review/{second}", data={"verdict": "approve"}, headers=headers, follow_redirects=False
    )
    assert r.status_code == 303


def test_a_browser_refused_on_the_dashboard_gets_a_page_saying_why_a_script_gets_json(
    clients, module_pg_url: str, tmp_path: Path
) -> None:
    client = clients()
    tenant, headers = new_key(module_pg_url, role="review")
    job_id = held_job(module_pg_url, tmp_path, tenant)
    assert sign_in(client, secret_of(headers)).status_code == 303
    browser = {
        "accept": "text/html,application/xhtml+xml,*/*;q=0.8",
        "referer": "http://testserver/dashboard/review?language=en",
    }
    r = client.post(
        f"/dashboard/review/{job_id}", data={"verdict": "reject", "csrf": "x" * 43}, headers=browser
    )
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
    detail = r.text.split('id="error-detail">')[1].split("</p>")[0]
    assert "CSRF" in detail and "<h1>403 Forbidden</h1>" in r.text
    assert 'href="/dashboard/review?language=en" id="error-back"' in r.text
    assert r.headers["x-frame-options"] == "DENY" and "content-security-policy" in r.headers
    # a back link never leads off the site
    elsewhere = {**browser, "referer": "https://evil.example/dashboard/x"}
    r = client.post(f"/dashboard/review/{job_id}", data={"verdict": "reject"}, headers=elsewhere)
    assert 'href="/dashboard" id="error-back"' in r.text
    # a script (no text/html in Accept) and the API keep the JSON answer
    r = client.post(f"/dashboard/review/{job_id}", data={"verdict": "reject", "csrf": "x" * 43})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = client.get(f"/v1/jobs/{uuid.uuid4()}", headers={**headers, "accept": "text/html"})
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    with session_scope(module_pg_url) as session:
        assert session.get(Job, job_id).status == "held"  # nothing was decided


class PageAssets(HTMLParser):
    """What a page would load or run: scripts, styles, inline handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.assets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "style":
            self.problems.append("<style>")
        if tag == "script":
            if not a.get("src"):
                self.problems.append("inline <script>")
            else:
                self.assets.append(a["src"])
        if tag == "link":
            self.assets.append(a.get("href") or "")
        if tag == "img":
            self.assets.append(a.get("src") or "")
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"{tag} {name}=")


def test_html_pages_carry_security_headers_and_load_only_their_own_assets(
    clients, module_pg_url: str, tmp_path: Path
) -> None:
    from gateway.dashboard import DASHBOARD_CSP

    client = clients()
    tenant, headers = new_key(module_pg_url, role="review")
    job_id = held_job(module_pg_url, tmp_path, tenant)
    seed(
        get_engine(module_pg_url), [{"tenant": tenant, "language": "en", "score": 0.1, "action": "continue"}]
    )
    assert sign_in(client, secret_of(headers)).status_code == 303
    pages = ["/dashboard", "/dashboard/fairness", "/dashboard/jobs", f"/dashboard/jobs/{job_id}",
             "/dashboard/review", "/dashboard/login"]  # fmt: skip
    for path in pages:
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == DASHBOARD_CSP, path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        parser = PageAssets()
        parser.feed(r.text)
        assert parser.problems == [], (path, parser.problems)
        for asset in parser.assets:
            assert asset.startswith("/dashboard/"), (path, asset)  # 'self' only
            assert client.get(asset).status_code == 200, asset
    assert "image-rendering: pixelated" in client.get("/dashboard/static/dashboard.css").text
    js = client.get("/dashboard/static/review.js")
    assert js.headers["content-type"].startswith("text/javascript") and js.headers["x-content-type-options"]
    assert client.get("/dashboard/static/..%2Fdashboard.py").status_code == 404
    # the API's JSON answers and its docs page too
    api = client.get(f"/v1/jobs/{job_id}", headers=headers)
    assert api.status_code == 200 and api.headers["x-content-type-options"] == "nosniff"
    assert client.get("/healthz").headers["x-content-type-options"] == "nosniff"
    docs = client.get("/docs")
    assert (
        docs.headers["x-frame-options"] == "DENY"
        and "frame-ancestors 'none'" in docs.headers["content-security-policy"]
    )


def test_an_unhandled_exception_is_a_500_with_the_headers_naming_no_internals(clients) -> None:
    from gateway.dashboard import DASHBOARD_CSP

    client = clients()

    def boom() -> None:
        raise RuntimeError("connect to postgresql://admin:hunter2@10.0.0.5/audit failed")

    for path in ("/v1/boom", "/dashboard/boom", "/v1/images/boom"):
        client.app.add_api_route(path, boom)  # the test app only: the product has no such route
    api = client.get("/v1/boom")
    assert api.status_code == 500 and api.json() == {"detail": "internal server error"}
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["content-type"] == "application/json"
    page = client.get("/dashboard/boom")
    assert page.status_code == 500 and page.json() == {"detail": "internal server error"}
    assert page.headers["content-security-policy"] == DASHBOARD_CSP
    assert page.headers["x-frame-options"] == "DENY"
    openai = client.get("/v1/images/boom")  # OpenAI's SDKs read their own shape
    assert openai.status_code == 500 and openai.headers["x-content-type-options"] == "nosniff"
    assert openai.json()["error"]["type"] == "server_error"
    for r in (api, page, openai):
        assert "hunter2" not in r.text and "RuntimeError" not in r.text and "Traceback" not in r.text


# --- /metrics and the replay ---


def test_metrics_want_the_token_or_a_loopback_client(module_pg_url: str, tmp_path: Path) -> None:
    tenant, headers = new_key(module_pg_url)
    seed(get_engine(module_pg_url), [{"tenant": tenant, "language": "en", "score": 0.1, "action": "halt"}])
    for host, status in (("203.0.113.9", 403), ("127.0.0.1", 200), ("::1", 200)):
        with build(module_pg_url, tmp_path, host, metrics_token=None) as client:
            r = client.get("/metrics")
            assert r.status_code == status, host
    with build(module_pg_url, tmp_path, "203.0.113.9") as client:
        assert client.get("/metrics").status_code == 401
        assert (
            client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456"}).status_code == 401
        )
        assert client.get("/metrics", headers=headers).status_code == 401  # an API key is not the token
        r = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert r.status_code == 200 and 'emoe_decisions{action="halt"' in r.text
        assert "tenant=" not in r.text  # no per-tenant figures unless asked
    with build(module_pg_url, tmp_path, "127.0.0.1", metrics_per_tenant=True) as client:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
        assert f'emoe_tenant_decisions{{action="halt",tenant="{tenant}"}} 1.0' in text


def test_a_stored_replay_keeps_each_tenants_totals(clients, module_pg_url: str, tmp_path: Path) -> None:
    from audit.replay import decision_records, store_replay_run
    from policies.replay import replay

    mine, headers = new_key(module_pg_url, role="read")
    theirs = f"other{uuid.uuid4().hex[:6]}"
    rows = [{"tenant": mine, "language": "en", "score": 0.6, "action": "continue"} for _ in range(3)]
    rows += [{"tenant": theirs, "language": "de", "score": 0.9, "action": "continue"} for _ in range(5)]
    seed(get_engine(module_pg_url), rows)
    stricter = parse_policy({"name": "strict", "version": "9", "fingerprint": "f" * 64, "flag_at": 0.5,
                             "halt_at": 0.8})  # fmt: skip
    with session_scope(module_pg_url) as session:
        summary = replay(decision_records(session), stricter)
        run = store_replay_run(session, stricter, summary)
        by_tenant = run.summary["tenants"]
        assert by_tenant[mine]["after"] == {"flag": 3} and by_tenant[mine]["total"] == 3
        assert by_tenant[theirs]["after"] == {"halt": 5}
    page = clients().get("/dashboard", headers=headers).text
    replay_html = re.search(r'<div id="replay">(.*?)</div>', page, re.S).group(1)
    assert "strict 9" in replay_html and "<td>0 → 3</td>" in replay_html  # flag: 0 then, 3 would be
    assert "<td>0 → 5</td>" not in replay_html


# --- the review page ---


def test_the_review_page_is_for_review_keys(clients, module_pg_url: str, tmp_path: Path) -> None:
    client = clients()
    tenant, review = new_key(module_pg_url, role="review")
    _, read = new_key(module_pg_url, tenant, "read")
    first = held_job(module_pg_url, tmp_path, tenant, 1.2, prompt="first held", labels={"region": "eu"})
    second = held_job(module_pg_url, tmp_path, tenant, 1.7, prompt="second held", language="fi")
    r = client.get("/dashboard/review", headers=read)
    assert r.status_code == 403 and 'id="review-forbidden"' in r.text
    assert 'id="nav-review"' not in client.get("/dashboard", headers=read).text

    page = client.get("/dashboard/review", headers=review)
    assert page.status_code == 200 and 'id="nav-review"' in page.text
    assert '<h2 id="queue-count">2 awaiting a verdict</h2>' in page.text
    assert re.findall(r'class="queued[^"]*" data-job="([^"]+)"', page.text) == [str(first), str(second)]
    assert f'data-job="{first}">' in page.text and "first held" in page.text  # the oldest is opened
    assert "region: eu" in page.text and "flag at 1, halt at 2" in page.text
    assert page.text.count('<rect x="60"') == 4  # one bar per path's deviation
    assert f'<img class="big" alt="image 0" src="/dashboard/jobs/{first}/images/0">' in page.text
    assert f'href="/dashboard/review?job={second}" id="next-job"' in page.text
    with session_scope(module_pg_url) as session:
        assert session.get(Job, first).review_lease_by == secret_of(review)[:12]  # opening it leased it
    assert client.get(f"/dashboard/jobs/{first}/images/0", headers=review).status_code == 200
    assert client.get(f"/dashboard/jobs/{first}/images/0", headers=read).status_code == 403
    assert 'id="images-held"' in client.get(f"/dashboard/jobs/{first}", headers=read).text

    # filters, and the job another reviewer holds
    only_fi = client.get("/dashboard/review?language=fi", headers=review).text
    assert '<h2 id="queue-count">1 awaiting a verdict</h2>' in only_fi
    _, colleague = new_key(module_pg_url, tenant, "review")
    held = client.get(f"/dashboard/review?job={first}", headers=colleague)
    assert held.status_code == 200 and 'id="problem"' in held.text and 'id="verdict-form"' not in held.text
    assert client.get("/dashboard/review?min_score=abc", headers=review).status_code == 422


def test_verdicts_and_bulk_verdicts_from_the_review_page(clients, module_pg_url: str, tmp_path: Path) -> None:
    client = clients()
    tenant, review = new_key(module_pg_url, role="review")
    _, read = new_key(module_pg_url, tenant, "read")
    approved, rejected = held_job(module_pg_url, tmp_path, tenant), held_job(module_pg_url, tmp_path, tenant)
    assert sign_in(client, secret_of(review)).status_code == 303
    token = csrf_of(client.get(f"/dashboard/review?job={approved}").text)
    form = {"verdict": "approve", "note": "fine", "csrf": token}
    r = client.post(f"/dashboard/review/{approved}", data=form, follow_redirects=False)
    assert r.status_code == 303
    client.get(f"/dashboard/review?job={rejected}")
    bad = client.post(
        f"/dashboard/review/{rejected}", data={"verdict": "reject", "note": "a\x07b", "csrf": token}
    )
    assert bad.status_code == 422 and "note" in bad.text
    r = client.post(f"/dashboard/review/{rejected}", data={"verdict": "reject", "csrf": token})
    assert r.status_code == 200  # followed back to the queue
    assert client.get(f"/v1/jobs/{approved}/images/0", headers=read).status_code == 200
    assert client.get(f"/v1/jobs/{rejected}/images/0", headers=read).status_code == 403
    again = client.post(f"/dashboard/review/{approved}", data={"verdict": "reject", "csrf": token})
    assert again.status_code == 409  # decided: an override is not offered on the page
    with session_scope(module_pg_url) as session:
        verdicts = session.scalars(sa.select(Review).where(Review.tenant == tenant).order_by(Review.id)).all()
        assert [(v.verdict, v.note, v.reviewer) for v in verdicts] == [
            ("approve", "fine", secret_of(review)[:12]),
            ("reject", None, secret_of(review)[:12]),
        ]

    bulk = [held_job(module_pg_url, tmp_path, tenant, language="fi") for _ in range(3)]
    held_job(module_pg_url, tmp_path, tenant, language="en")
    page = client.get("/dashboard/review?language=fi").text
    assert 'id="bulk-n">3<' in page and 'data-confirm="Approve all 3 selected jobs?' in page
    form = {"csrf": token, "language": "fi", "verdict": "approve"}
    assert client.post("/dashboard/review/bulk", data={**form, "confirm": "2"}).status_code == 409
    r = client.post("/dashboard/review/bulk", data={**form, "confirm": "3"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/review?language=fi&done=bulk"
    with session_scope(module_pg_url) as session:
        assert {session.get(Job, j).status for j in bulk} == {"completed"}
        assert session.scalar(sa.select(sa.func.count()).select_from(Job).where(
            Job.tenant == tenant, Job.status == "held")) == 1  # fmt: skip
