"""Stored text stays text: markup and script submitted in every stored field (prompt, negative prompt, labels,
review note; policy names, versions and rules in the log) is escaped on every dashboard page and in the HTML
report, whose embedded JSON escapes `<` so that `<!--<script>` cannot break it (issue 11)."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from audit.db import get_engine, session_scope
from tests.audit.report_seed import seed
from tests.gateway.helpers import make_settings, new_key
from tests.gateway.test_dashboard_security import csrf_of, secret_of, sign_in, through_gate

pytestmark = pytest.mark.postgres

SCRIPT = '<script>alert("xss")</script>'
COMMENT = "<!--<script>"
ATTR = '"><img src=x onerror=alert(1)>'
PAYLOADS = (SCRIPT, COMMENT, ATTR)
RAW = ("<script>alert", "<!--<script>", "<img src=x", "onerror=alert(1)>")


class Elements(HTMLParser):
    """The elements and attributes a browser would build from a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[str] = []
        self.images: list[str | None] = []
        self.comments: list[str] = []
        self._in_data_script = False
        self.data: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_data_script = dict(attrs).get("type") == "application/json"
        if tag == "img":
            self.images.append(dict(attrs).get("src"))
        self.handlers += [f"{tag}.{name}" for name, _ in attrs if name.startswith("on")]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_data_script = False

    def handle_data(self, data: str) -> None:
        if self._in_data_script:
            self.data.append(data)

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


def assert_inert(html: str, where: str, allowed_scripts: set[str]) -> Elements:
    """No payload became markup: no raw payload text, no extra script, handler, stray image or comment."""
    for raw in RAW:
        assert raw not in html, (where, raw)
    parsed = Elements()
    parsed.feed(html)
    assert {s.get("src") or s.get("id") or "inline" for s in parsed.scripts} <= allowed_scripts, where
    assert parsed.handlers == [], where
    assert "x" not in parsed.images, where
    assert parsed.comments == [], where
    return parsed


@pytest.fixture
def hostile(module_pg_url: str, tmp_path: Path):
    """A tenant whose jobs carry the payloads in every field: one completed, one held for review, and log rows
    whose policy name, version and rule carry them too."""
    from gateway.app import create_app

    settings = make_settings(module_pg_url, tmp_path)
    tenant, submit = new_key(module_pg_url)
    _, review = new_key(module_pg_url, tenant, "review")
    with TestClient(create_app(settings, start_workers=False)) as client:
        body = {
            "prompt": f"a red cat {SCRIPT} {COMMENT} {ATTR}",
            "negative_prompt": f"{ATTR} {SCRIPT}",
            "labels": {"team": COMMENT + SCRIPT, "region": ATTR},
        }
        ids = []
        for _ in range(2):
            r = client.post("/v1/jobs", json=body, headers=submit)
            assert r.status_code in (200, 201, 202), r.text
            ids.append(uuid.UUID(r.json()["id"]))
        completed, held = ids
        assert through_gate(module_pg_url, tmp_path, completed, 0.5) == "completed"
        assert through_gate(module_pg_url, tmp_path, held, 1.5) == "held"
        seed(get_engine(module_pg_url), [
            {"tenant": tenant, "language": "en", "score": 0.3, "action": "continue", "prompt": SCRIPT,
             "policy_name": ATTR, "policy_version": COMMENT, "rule": SCRIPT, "labels": {"team": ATTR}},
        ])  # fmt: skip
        assert sign_in(client, secret_of(review)).status_code == 303
        token = csrf_of(client.get(f"/dashboard/review?job={held}").text)
        note = f"{SCRIPT}{COMMENT}{ATTR}"
        r = client.post(
            f"/dashboard/review/{held}", data={"verdict": "escalate", "note": note, "csrf": token}
        )
        assert r.status_code == 200
        yield {"client": client, "tenant": tenant, "completed": completed, "held": held, "body": body}


def test_every_dashboard_page_shows_the_payloads_as_text(hostile) -> None:
    client, completed, held = hostile["client"], hostile["completed"], hostile["held"]
    review_js = {"/dashboard/static/review.js"}
    pages = {
        "/dashboard": set(),
        "/dashboard/fairness": set(),
        "/dashboard/fairness?group_by=team": set(),
        "/dashboard/fairness?group_by=region": set(),
        "/dashboard/jobs": set(),
        "/dashboard/jobs?status=held": set(),
        "/dashboard/jobs?" + urlencode({"prompt": SCRIPT}): set(),  # the search echoed in its field
        "/dashboard?period=24h": set(),
        f"/dashboard/jobs/{completed}": set(),
        f"/dashboard/jobs/{held}": set(),
        "/dashboard/review": review_js,
        f"/dashboard/review?job={held}": review_js,
        "/dashboard/review?label=team:x": review_js,
    }
    for path, scripts in pages.items():
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        assert_inert(r.text, path, scripts)
    escaped_script = "&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt;"
    job = client.get(f"/dashboard/jobs/{completed}").text
    assert escaped_script in job and "&lt;!--&lt;script&gt;" in job and "&#34;&gt;&lt;img src=x" in job
    review = client.get(f"/dashboard/review?job={held}").text
    assert review.count(escaped_script) >= 3  # prompt, negative prompt, labels (and the note)
    assert "&lt;!--&lt;script&gt;&lt;script&gt;alert" in review  # the team label
    notes = re.search(r'<table id="verdicts">(.*?)</table>', review, re.S).group(1)
    assert escaped_script + "&lt;!--&lt;script&gt;&#34;&gt;&lt;img" in notes
    jobs = client.get("/dashboard/jobs").text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in jobs  # the seeded policy name
    overview = client.get("/dashboard").text
    assert "&lt;!--&lt;script&gt;" in overview  # the seeded policy version
    fair = client.get("/dashboard/fairness?group_by=team").text
    assert 'data-group="&lt;!--&lt;script&gt;&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt;"' in fair


def test_the_new_columns_and_the_csv_keep_the_payloads_as_text(hostile) -> None:
    client, body = hostile["client"], hostile["body"]
    jobs = client.get("/dashboard/jobs?status=completed").text
    labels = re.findall(r'<td class="l labels">(.*?)</td>', jobs)
    assert '<span class="label">region=&#34;&gt;&lt;img src=x onerror=alert(1)&gt;</span>' in labels[-1]
    assert "team=&lt;!--&lt;script&gt;&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt;" in labels[-1]
    assert 'data-status="completed"' in jobs
    found = client.get("/dashboard/jobs?" + urlencode({"prompt": SCRIPT})).text
    assert 'value="&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt;"' in found  # the search field
    assert found.count('class="job"') == 3  # the two API jobs and the seeded one carry it in the prompt
    job = client.get(f"/dashboard/jobs/{hostile['completed']}").text
    assert "team=&lt;!--&lt;script&gt;&lt;script&gt;" in job

    r = client.get("/dashboard/jobs.csv?" + urlencode({"prompt": SCRIPT}))
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"  # a browser never renders it as HTML
    assert r.headers["content-disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    mine = [row for row in rows if row["prompt"] == body["prompt"]]
    assert len(rows) == 3 and len(mine) == 2  # the payloads come back as the exact text, one cell each
    assert mine[0]["labels"] == f"region={ATTR}, team={COMMENT}{SCRIPT}"
    seeded = next(row for row in rows if row["prompt"] == SCRIPT)
    assert seeded["rule"] == SCRIPT and seeded["policy"] == f"{ATTR} {COMMENT}"


def test_the_html_report_shows_the_payloads_as_text_and_its_json_survives(hostile) -> None:
    from audit.fairness import IntervalOptions
    from audit.report import ReportOptions, build_report, render_html

    tenant, body = hostile["tenant"], hostile["body"]
    settings = hostile["client"].app.state.settings
    with session_scope(settings.resolved_database_url) as session:
        for group_by in ("team", "region", "language"):
            report = build_report(
                session, ReportOptions(group_by=group_by, tenant=tenant, intervals=IntervalOptions(n_boot=50))
            )
            html = render_html(report)
            parsed = assert_inert(html, f"report by {group_by}", {"report-data"})
            (data,) = parsed.data
            assert "<" not in data and "\\u003c!--\\u003cscript\\u003e" in data
            assert json.loads(data) == json.loads(json.dumps(report))  # the same report, exactly
            if group_by != "language":  # the label values are the report's groups
                assert body["labels"][group_by] in {g["group"] for g in report["fairness"]["groups"]}
